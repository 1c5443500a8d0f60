"""A TCP listener on every host address, standing in for the gateway or control plane, that
records who connected: what isolation tests expect never to hear from a sandbox. And a tiny DNS
server that records every question (`python -m tests.listener HOST PORT ANSWERS_JSON` runs one in
a network namespace and reports each question on stdout).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class HostListener:
    """A TCP listener on all host addresses (standing in for the gateway / control plane) that
    records who connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.peers.append(peer[0])
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# -- DNS ---------------------------------------------------------------------------------------------
def dns_question(message: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset of the question) of a DNS query; ValueError if it is not one."""
    if len(message) < 12 or int.from_bytes(message[4:6], "big") != 1:
        raise ValueError("not a single-question DNS message")
    labels, offset = [], 12
    while True:
        if offset >= len(message):
            raise ValueError("truncated DNS name")
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:  # compression pointers never occur in a query's question
            raise ValueError("unexpected label length")
        labels.append(message[offset:offset + length].decode("ascii", errors="replace").lower())
        offset += length
    if offset + 4 > len(message):
        raise ValueError("truncated DNS question")
    return ".".join(labels), int.from_bytes(message[offset:offset + 2], "big"), offset + 4


def dns_query(name: str, query_id: int = 0x5354, qtype: int = 1) -> bytes:
    """A recursive DNS query for `name` (A records unless `qtype` says otherwise)."""
    question = b"".join(len(label).to_bytes(1, "big") + label.encode() for label in name.split(".")) + b"\0"
    return query_id.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question + \
        qtype.to_bytes(2, "big") + b"\x00\x01"


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += length + 1


def dns_answer_addresses(message: bytes) -> tuple[int, list[str]]:
    """(rcode, A-record addresses) of a DNS response to one question."""
    _, _, offset = dns_question(message)
    rcode, found = message[3] & 0x0F, []
    for _ in range(int.from_bytes(message[6:8], "big")):
        offset = _skip_name(message, offset)
        rtype = int.from_bytes(message[offset:offset + 2], "big")
        length = int.from_bytes(message[offset + 8:offset + 10], "big")
        offset += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(message[offset:offset + 4]))
        offset += length
    return rcode, found


class DnsRecorder:
    """A tiny authoritative DNS server on UDP and TCP that records every question it gets.

    A queries for a name in `answers` get those addresses; every other question gets NXDOMAIN
    (AAAA for a known name: an empty answer). `on_query(peer, name, transport)` is called for each.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 53, answers: dict[str, list[str]] | None = None,
                 on_query: Callable[[str, str, str], None] | None = None) -> None:
        self.answers = {name.lower(): list(ips) for name, ips in (answers or {}).items()}
        self.queries: list[tuple[str, str, str]] = []
        self._on_query = on_query
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, port))
        self.udp.settimeout(0.2)
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, self.port))
        self.tcp.listen(16)
        self.tcp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self._threads:
            thread.start()

    def names(self) -> set[str]:
        return {name for _, name, _ in self.queries}

    def _respond(self, message: bytes, peer: str, transport: str) -> bytes | None:
        try:
            name, qtype, end = dns_question(message)
        except ValueError:
            return None
        self.queries.append((peer, name, transport))
        if self._on_query is not None:
            self._on_query(peer, name, transport)
        known = self.answers.get(name)
        addresses = known if known is not None and qtype == 1 else []
        rcode = 0 if known is not None else 3
        flags = 0x8400 | (int.from_bytes(message[2:4], "big") & 0x0100) | rcode  # QR, AA, RD copied
        counts = b"\x00\x01" + len(addresses).to_bytes(2, "big") + b"\0\0\0\0"  # 1 question, n answers
        header = message[:2] + flags.to_bytes(2, "big") + counts
        # each answer: the question's name (pointer), A, IN, TTL 5, 4 bytes of address
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04"
        records = b"".join(answer + socket.inet_aton(ip) for ip in addresses)
        return header + message[12:end] + records

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                message, peer = self.udp.recvfrom(4096)
            except OSError:
                continue
            reply = self._respond(message, peer[0], "udp")
            if reply is not None:
                self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    size = int.from_bytes(conn.recv(2), "big")
                    message = b""
                    while len(message) < size:
                        chunk = conn.recv(size - len(message))
                        if not chunk:
                            break
                        message += chunk
                    reply = self._respond(message, peer[0], "tcp")
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.udp.close()
        self.tcp.close()


def _serve_dns_and_report(host: str, port: int, answers_json: str) -> None:
    """Run a DnsRecorder (in a namespace the caller entered) and print each question as a JSON line."""
    import json
    import sys

    lock = threading.Lock()  # the UDP and TCP threads both report: one whole line at a time

    def report(peer: str, name: str, transport: str) -> None:
        with lock:
            print(json.dumps({"peer": peer, "name": name, "transport": transport}), flush=True)

    recorder = DnsRecorder(host, port, json.loads(answers_json), on_query=report)
    print("ready", flush=True)
    sys.stdin.read()  # until the caller closes our stdin
    recorder.close()


if __name__ == "__main__":
    import sys

    _serve_dns_and_report(sys.argv[1], int(sys.argv[2]), sys.argv[3])
