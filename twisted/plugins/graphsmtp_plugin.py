"""twistd/twist plugin: ``twistd -n graphsmtp --config /etc/graphsmtp/graphsmtp.toml``."""

from twisted.application.service import ServiceMaker

graphsmtp = ServiceMaker(
    "graphsmtp",
    "gateway.tap",
    "SMTP and sendmail gateway delivering through Microsoft Graph",
    "graphsmtp",
)
