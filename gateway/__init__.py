"""graphsmtp: accept mail over SMTP or sendmail, spool it durably, deliver it through Microsoft Graph."""

__version__ = "0.1.0"
