"""
The SMTP intake: the wire protocol, from a client's first byte to the 250 after DATA.

One session is made of parts with one job each; a part imports only parts above it in this
list and the shared helpers below, never the reverse:

* ``input``        the client's bytes cut into command lines and DATA chunks, without I/O:
                   pipelining order, when to pause reading, line limits;
* ``state``        the session's one connection state and the moves it may make;
* ``flow``         the conversation's pace: replies in command order, back-pressure both ways;
* ``login``        AUTH through ``twisted.cred``;
* ``greeting``     HELO/EHLO (name check, capabilities) and STARTTLS;
* ``transaction``  MAIL/RCPT/DATA: envelope, policy chain, spool writer, end-of-DATA judgement
                   (``intake``/``framing``/``headers`` turn DATA bytes into the stored message);
* ``commands``     the verb table and the rules applied before any verb runs;
* ``protocol``     the session itself (``GatewayESMTP``: ``Protocol`` + ``TimeoutMixin``);
* ``factory``      one listener's sessions, connection limits, graceful drain;
* ``listener``, ``proxy``, ``tls``, ``local``  endpoints, PROXY protocol, certificates, and the
                   local submission socket.

Shared helpers: ``replies`` (reply text, verdict and spool-error replies), ``peers`` (client
addresses, trusted networks), ``addresses`` (MAIL/RCPT/HELO argument grammar), ``auth`` (the
PLAIN/LOGIN exchange).
"""
