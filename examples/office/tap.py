"""A recording SMTP proxy between two gateways: what crossed, read inside the TLS it crossed in.

The manifest lists the tap as the receiving member's gateway; the tap forwards
each connection to the real one. Up to STARTTLS it relays the commands and
replies line by line; on ``220`` to STARTTLS it opens TLS on both sides (to the
sender with the receiving gateway's own certificate and key, so the pin the
sender checks is the right one; to the receiver with the sending gateway's
certificate, so the receiver's ``member_cert`` rule sees the sender's pin) and
from then on copies bytes both ways, keeping what the client sent.
``messages()`` gives the DATA bodies of everything that crossed, dot-unstuffed.
It needs the two gateways' TLS keys: a test bench, not a network tap.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path


class Tap:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], *,
                 server_cert: tuple[Path, Path], client_cert: tuple[Path, Path]) -> None:
        self.listen, self.upstream = listen, upstream
        self.server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_tls.load_cert_chain(*map(str, server_cert))
        self.client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_tls.check_hostname = False
        self.client_tls.verify_mode = ssl.CERT_NONE   # the receiver's pin is the sender's business
        self.client_tls.load_cert_chain(*map(str, client_cert))
        self.sessions: list[dict] = []                # {"tls": bool, "sent": bytearray}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    def __enter__(self) -> "Tap":
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.handle, *self.listen), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        session = {"tls": False, "sent": bytearray()}
        self.sessions.append(session)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        try:
            await self.relay(session, c_reader, c_writer, s_reader, s_writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (c_writer, s_writer):
                w.close()

    async def relay(self, session, c_reader, c_writer, s_reader, s_writer) -> None:
        c_writer.write(await self.reply(s_reader))               # the greeting
        while True:                                              # in clear: one command, one reply
            line = await c_reader.readline()
            if not line:
                return
            session["sent"] += line
            s_writer.write(line)
            reply = await self.reply(s_reader)
            if line.strip().upper() == b"STARTTLS" and reply.startswith(b"220"):
                break
            c_writer.write(reply)
        # Upstream first: the client's handshake must not start (and be read into the stream's
        # buffer, lost to TLS) before the tap's side of it is ready; nothing awaits between the
        # 220 and start_tls, which stops reading the socket before it yields.
        await s_writer.start_tls(self.client_tls)
        c_writer.write(reply)
        await c_writer.start_tls(self.server_tls)
        session["tls"] = True
        await asyncio.gather(self.pump(c_reader, s_writer, session["sent"]), self.pump(s_reader, c_writer, None))

    @staticmethod
    async def reply(reader) -> bytes:
        """One (multi-line) reply."""
        out = b""
        while True:
            line = await reader.readline()
            if not line:
                raise asyncio.IncompleteReadError(out, None)
            out += line
            if line[3:4] != b"-":
                return out

    @staticmethod
    async def pump(reader, writer, record: bytearray | None) -> None:
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()
        writer.close()

    def messages(self) -> list[bytes]:
        """Every DATA body the sending side sent through the tap (dot-unstuffed, CRLF kept)."""
        out = []
        for s in list(self.sessions):
            lines, body = bytes(s["sent"]).split(b"\r\n"), None
            for line in lines:
                if body is None:
                    if line.upper() == b"DATA":
                        body = []
                elif line == b".":
                    out.append(b"".join(x + b"\r\n" for x in body))
                    body = None
                else:
                    body.append(line[1:] if line.startswith(b".") else line)
        return out

    def all_tls(self) -> bool:
        """Every session that sent a message did so inside TLS."""
        return all(s["tls"] for s in self.sessions if b"\r\nDATA\r\n" in bytes(s["sent"]).upper())
