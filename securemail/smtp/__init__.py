"""SMTP adapter: a hardened aiosmtpd server and a thin handler around pure decisions."""

from securemail.smtp import replies
from securemail.smtp.handler import GatewayHandler, SessionInfo
from securemail.smtp.server import Limits, SMTPServer, make_server, running_server

__all__ = ["GatewayHandler", "Limits", "SMTPServer", "SessionInfo", "make_server",
           "replies", "running_server"]
