"""
The line rules of RFC 5322 that every way into the gateway applies to a message's content.

RFC 5322 §2.1.1 ("Each line of characters MUST be no more than 998 characters ... excluding the
CRLF") and §2.3 (no NUL), which 8BITMIME (RFC 6152 §2) does not lift.  A relay that passed such
a message on would leave the next hop to guess — truncate, fold or split the line; drop or keep
the NUL — so the SMTP intake refuses it at the end of DATA (550 5.6.0) and graphsmtp-sendmail
refuses it before anything reaches the spool (EX_DATAERR).  One constant, so the two ways in
cannot drift apart.
"""

from __future__ import annotations

#: The longest line a message may hold, in octets, not counting its CRLF.
MESSAGE_LINE_LIMIT = 998

__all__ = ["MESSAGE_LINE_LIMIT"]
