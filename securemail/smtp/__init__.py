"""SMTP adapter: a hardened aiosmtpd server and a thin handler around pure decisions."""

from securemail.smtp import replies

# The adapter is imported on first use: a process that only needs the named replies (a crypto
# worker: the header-block refusals of mail/headers.py) does not load aiosmtpd.
_LAZY = {"GatewayHandler": "handler", "SessionInfo": "handler",
         "SMTPServer": "server", "make_server": "server", "running_server": "server"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = ["GatewayHandler", "SMTPServer", "SessionInfo", "make_server",
           "replies", "running_server"]
