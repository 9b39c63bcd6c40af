"""
The queue: takes entries the spool holds and hands them to the deliverer when their sending
mailbox can start them, then records the outcome back in the spool.

It sits above both the spool (storage only, L{gateway.spool.interfaces.IQueueSpool}) and
delivery (L{gateway.delivery.interfaces.IDeliverer}) and knows them only through those
interfaces, so neither of them needs to know the queue exists.
"""
