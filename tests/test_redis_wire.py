"""The replica's own Redis client (workers/redis_wire.py), against the real Redis and a fake
one that misbehaves on cue: the URL forms replicas are given, a Redis that is not there, that
closes a connection half way through a reply, that restarts, a blocking read given up on (the
connection must never hand its late reply to the next command), large values both ways, error
replies inside a pipeline, scripts Redis has not seen, ACL users, threads sharing a client."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import hiredis
import pytest
import redis
from django.conf import settings

from tests.test_serve_loop import RunningReplica, bundle_file, doubler
from workers import protocol, redis_acl, redis_wire
from workers.redis_wire import Address, parse_url

MB = 1024 * 1024


def client(url: str | None = None, **options) -> redis_wire.Client:
    return redis_wire.Client(url or settings.REDIS_URL, **{"connect_timeout": 2, **options})


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "address"), [
    ("unix:///tmp/run/redis.sock", Address(path="/tmp/run/redis.sock")),
    ("unix:///tmp/run/redis.sock?db=2", Address(path="/tmp/run/redis.sock", db=2)),
    # what workers.redis_acl.with_credentials writes: user and password percent-encoded
    ("unix://launch-rep_1:p%2Fw%40x@/tmp/run/redis.sock?db=0",
     Address(path="/tmp/run/redis.sock", username="launch-rep_1", password="p/w@x")),
    ("unix://default:secret@/tmp/launch/run/redis.sock", Address(path="/tmp/launch/run/redis.sock", username="default",
                                                                 password="secret")),
    ("redis://127.0.0.1:6390/0", Address(host="127.0.0.1", port=6390)),
    ("redis://redis.internal/3", Address(host="redis.internal", db=3)),
    ("redis://:only-a-password@redis.internal:7000", Address(host="redis.internal", port=7000,
                                                            password="only-a-password")),
    ("redis://u:p@[::1]:7001/4?db=4", Address(host="::1", port=7001, username="u", password="p", db=4)),
    ("rediss://u:p@redis.example.com:6380/1", Address(host="redis.example.com", port=6380, tls=True, username="u",
                                                      password="p", db=1)),
    ("rediss://redis.example.com?ssl_cert_reqs=none", Address(host="redis.example.com", tls=True,
                                                              tls_cert_reqs="none")),
    ("rediss://h?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false",
     Address(host="h", tls=True, tls_ca_certs="/etc/ca.pem", tls_check_hostname=False)),
])
def test_the_url_forms_replicas_are_given_are_read_whole(url, address):
    assert parse_url(url) == address


@pytest.mark.parametrize(("url", "message"), [
    ("http://redis:6379", "must start with unix://, redis:// or rediss://"),
    ("unix://", "needs the socket's path"),
    ("redis://h:6379/0?socket_timeout=5", "does not support 'socket_timeout'"),
    ("unix:///tmp/redis.sock?health_check_interval=10", "does not support 'health_check_interval'"),
    ("redis://h?ssl_cert_reqs=none", "does not support 'ssl_cert_reqs'"),  # TLS options without TLS
    ("rediss://h?ssl_cert_reqs=sometimes", "must be one of none, optional, required"),
    ("redis://h/1?db=2", "two db numbers"),
    ("redis://h/zero", "must be a number"),
    ("unix:///tmp/redis.sock?db=-1", "must not be negative"),
    ("unix:///tmp/redis.sock?db=1&db=2", "gives 'db' 2 times"),
    ("redis://user@h", "names a user but no password"),
])
def test_a_url_the_client_cannot_honour_whole_is_refused_by_name(url, message):
    with pytest.raises(ValueError, match=message):
        redis_wire.Client(url)


def test_an_argument_redis_py_would_refuse_is_refused_before_anything_is_sent(key):
    wire = client()
    with pytest.raises(redis_wire.DataError):
        wire.execute("SET", key, True)
    assert wire.execute("SET", key, 1.5) == b"OK" and wire.execute("GET", key) == b"1.5"


# --- a fake Redis that misbehaves on cue -----------------------------------------------------


class FakeRedis:
    """A TCP server answering each command with `answer(command)`: RESP bytes, or
    ("close", bytes) to send those bytes and close the connection."""

    def __init__(self, answer):
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        reader = hiredis.Reader()
        with conn:
            while data := conn.recv(MB):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    self.commands.append(command)
                    reply = self.answer(command)
                    if isinstance(reply, tuple):
                        conn.sendall(reply[1])
                        return
                    conn.sendall(reply)

    def close(self):
        self.listener.close()


def test_redis_closing_the_connection_half_way_through_a_reply_fails_that_command_only():
    def answer(command):
        if command[0] == b"GET":
            return ("close", b"$1048576\r\n" + b"x" * 1000)  # a megabyte announced, a kilobyte sent
        return b"+PONG\r\n"

    fake = FakeRedis(answer)
    wire = client(fake.url)
    connection = wire.connection()
    connection.send_command("GET", "k")
    with pytest.raises(redis_wire.ConnectionFailed, match="closed the connection"):
        connection.read_response()
    assert connection.sock is None  # closed, not kept with a half-read reply
    connection.send_command("PING")  # connects afresh
    assert connection.read_response() == b"PONG"
    with pytest.raises(redis_wire.ConnectionFailed):
        wire.execute("GET", "k")
    assert wire.execute("PING") == b"PONG"
    assert fake.connections == 4  # the dedicated connection twice, the pooled one twice
    fake.close()


def test_a_pooled_command_that_redis_refuses_while_loading_is_tried_again():
    loading = [2]

    def answer(command):
        if loading[0]:
            loading[0] -= 1
            return b"-LOADING Redis is loading the dataset in memory\r\n"
        return b"+PONG\r\n"

    fake = FakeRedis(answer)
    assert client(fake.url).execute("PING") == b"PONG"
    assert len(fake.commands) == 3
    fake.close()


def test_a_server_that_never_answers_the_handshake_times_out_even_on_a_connection_without_a_read_timeout():
    fake = FakeRedis(lambda command: b"")  # accepts, reads, says nothing
    host, port = fake.url.removeprefix("redis://").split(":")
    connection = client(f"redis://:secret@{host}:{port}", connect_timeout=0.3, connect_retries=0).connection()
    raised = []

    def send():
        try:
            connection.send_command("PING")
        except redis_wire.RedisError as error:
            raised.append(error)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=30)  # a guard against hanging the suite, not a measure
    assert not sender.is_alive(), "the connect waited for the handshake's answer without end"
    assert [type(error) for error in raised] == [redis_wire.TimedOut]
    assert fake.commands == [[b"AUTH", b"secret"]] and connection.sock is None
    fake.close()


def test_a_reply_that_is_not_resp_closes_the_connection():
    fake = FakeRedis(lambda command: b"?what\r\n")
    connection = client(fake.url).connection()
    connection.send_command("PING")
    with pytest.raises(redis_wire.ConnectionFailed):
        connection.read_response()
    assert connection.sock is None
    fake.close()


# --- a Redis that is not there, or restarts ----------------------------------------------------


def test_a_redis_that_is_not_there_is_a_connection_error_after_the_retries():
    missing = Path(tempfile.mkdtemp(prefix="launch-wire-")) / "redis.sock"
    listener = socket.create_server(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()
    for url in (f"unix://{missing}", f"redis://127.0.0.1:{closed_port}/0"):
        wire = client(url, connect_retries=2)
        with pytest.raises(redis_wire.ConnectionFailed, match="could not connect"):
            wire.execute("PING")
        connection = wire.connection()
        with pytest.raises(redis_wire.ConnectionFailed):
            connection.send_command("PING")


@pytest.fixture
def own_redis():
    """An embedded Redis of this test's own, to stop and start again."""
    from launch_site.embedded_redis import start_embedded_redis, stop_process

    directory = Path(tempfile.mkdtemp(prefix="launch-wire-"))  # short: a unix socket's path
    server = {"directory": directory}
    server["process"], server["url"] = start_embedded_redis(directory)

    def restart():
        stop_process(server["process"])
        server["process"], _ = start_embedded_redis(directory)

    server["restart"] = restart
    yield server
    stop_process(server["process"])
    shutil.rmtree(directory, ignore_errors=True)


def test_connections_find_redis_again_after_it_restarted(own_redis):
    wire = client(own_redis["url"])
    wire.execute("SET", "k", "before")
    blocked = wire.connection()
    blocked.send_command("BLMOVE", "empty", "elsewhere", "RIGHT", "LEFT", 30)
    own_redis["restart"]()
    # The pooled connection Redis closed while idle is replaced before use: no error at all.
    assert wire.execute("GET", "k") == b"before"  # the append-only file kept it
    with pytest.raises(redis_wire.ConnectionFailed):
        blocked.read_response()
    blocked.send_command("PING")
    assert blocked.read_response() == b"PONG"


def test_a_replica_keeps_serving_across_a_redis_restart(own_redis, tmp_path):
    outside = redis.Redis.from_url(own_redis["url"])
    with RunningReplica(bundle_file(tmp_path, doubler()), redis_url=own_redis["url"]) as running:
        assert running.record(outside, running.submit(outside, {"args": 1}))["result"] == "2"
        own_redis["restart"]()
        outside = redis.Redis.from_url(own_redis["url"])
        for value in (2, 3):
            task_id = running.submit(outside, {"args": value}, inline=False)  # a bare id: START_SCRIPT
            assert running.record(outside, task_id, timeout=20)["result"] == str(2 * value)


# --- timeouts, large values, pipelines, scripts --------------------------------------------------


def test_a_blocking_read_that_times_out_closes_its_connection_and_the_late_reply_is_nobodys(key, redis_client):
    connection = client().connection(timeout=0.3)
    connection.send_command("CLIENT", "ID")
    client_id = connection.read_response()
    connection.send_command("BLMOVE", f"{key}:queue", f"{key}:inflight", "RIGHT", "LEFT", 2)
    with pytest.raises(redis_wire.TimedOut):
        connection.read_response()
    assert connection.sock is None
    # Once Redis saw the connection go, its BLMOVE is gone with it. (Before, a push could still
    # be moved into the in-flight list, its reply lost: why the serve loop's takes have no read
    # timeout.)
    deadline = time.monotonic() + 5
    while redis_client.client_list(client_id=[client_id]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    redis_client.lpush(f"{key}:queue", "task")
    connection.send_command("ECHO", "mine")
    assert connection.read_response() == b"mine"  # not the BLMOVE's late reply
    assert redis_client.lrange(f"{key}:queue", 0, -1) == [b"task"]
    assert redis_client.llen(f"{key}:inflight") == 0
    connection.close()


def test_a_read_timeout_longer_than_the_block_gets_the_blocking_commands_answer(key):
    connection = client().connection(timeout=2)
    connection.send_command("BLMOVE", f"{key}:queue", f"{key}:inflight", "RIGHT", "LEFT", 0.2)
    assert connection.read_response() is None
    connection.close()


def test_a_megabyte_goes_both_ways_on_pooled_and_own_connections(key):
    value = bytes(range(256)) * (4 * 1024) + b"\r\n$-1\r\n"  # 1 MB and RESP-looking bytes
    text = "é\"\n" * (MB // 4)
    wire = client()
    assert wire.execute("SET", f"{key}:b", value) == b"OK"
    assert wire.execute("GET", f"{key}:b") == value
    assert wire.pipeline(("SET", f"{key}:t", text), ("GET", f"{key}:t"), ("STRLEN", f"{key}:b")) == [
        b"OK", text.encode(), len(value)]
    connection = wire.connection()
    connection.send_command("GET", f"{key}:b")
    connection.send_command("GET", f"{key}:t")
    assert connection.read_response() == value and connection.read_response() == text.encode()
    connection.close()


def test_a_value_sent_in_pieces_arrives_whole_between_other_arguments(key):
    # A tuple argument is one value sent from its pieces (sendmsg, several calls for a megabyte
    # over a unix socket's ~200 KB buffer), among arguments of every kind hiredis packs.
    pieces = (b"head\n", bytes(range(256)) * (4 * 1024) + b"\r\n$-1\r\n", b"", b"tail")
    connection = client().connection()
    connection.send_command("EVAL", "redis.call('SET', KEYS[1], ARGV[2]) return {ARGV[1], ARGV[3], ARGV[4]}", 1,
                            f"{key}:p", "é", pieces, 2.5, 7)
    assert connection.read_response() == ["é".encode(), b"2.5", b"7"]
    connection.send_command("GET", f"{key}:p")
    assert connection.read_response() == b"".join(pieces)
    connection.close()


def test_buffers_sent_in_part_are_sent_on_from_where_the_kernel_stopped():
    # With a timeout the socket is non-blocking underneath: each sendmsg takes what the
    # socket's buffer holds, often stopping inside a buffer.
    buffers = [b"a" * 100, bytes(range(256)) * 8192, b"", b"b" * 70_000, bytes(range(255, -1, -1)) * 4096]
    sender, receiver = socket.socketpair()
    sender.settimeout(10)
    received = bytearray()

    def read():
        while chunk := receiver.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    redis_wire._send_buffers(sender, buffers)
    sender.close()
    reader.join(10)
    receiver.close()
    assert bytes(received) == b"".join(buffers)


def test_an_error_reply_in_a_pipeline_is_raised_after_every_reply_was_read(key):
    wire = client()
    with pytest.raises(redis_wire.ResponseError, match="WRONGTYPE"):
        wire.pipeline(("SET", f"{key}:s", "v"), ("LPUSH", f"{key}:s", "x"), ("RPUSH", f"{key}:l", "a"))
    assert len(wire.idle) == 1 and wire.idle[0].sock is not None  # in step, so kept
    assert wire.execute("LRANGE", f"{key}:l", 0, -1) == [b"a"]  # the command after the error ran
    assert wire.pipeline(("GET", f"{key}:s"), ("EXISTS", f"{key}:nothing")) == [b"v", 0]
    with pytest.raises(redis_wire.ResponseError, match="unknown command"):
        wire.execute("NOSUCHCOMMAND")


def test_an_error_reply_on_an_own_connection_leaves_it_in_step(key):
    connection = client().connection()
    connection.send_command("SET", f"{key}:s", "v")
    connection.send_command("LPUSH", f"{key}:s", "x")
    connection.send_command("BLMOVE", f"{key}:nothing", f"{key}:else", "RIGHT", "LEFT", 0.1)
    assert connection.read_response() == b"OK"
    with pytest.raises(redis_wire.ResponseError, match="WRONGTYPE"):
        connection.read_response()
    assert connection.read_response() is None
    connection.close()


def test_a_script_redis_has_not_seen_is_sent_whole_once_then_run_by_its_sha(key, redis_client):
    source = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}}"
    script = client().script(source)
    assert redis_client.script_exists(script.sha) == [False]
    assert script(keys=[f"{key}:n"], args=["a"]) == [f"{key}:n".encode(), b"a", 1]  # NOSCRIPT, then EVAL
    assert redis_client.script_exists(script.sha) == [True]
    assert script(keys=[f"{key}:n"], args=[2.5]) == [f"{key}:n".encode(), b"2.5", 2]
    assert redis_client.get(f"{key}:n") == b"2"  # run once per call, not again after the NOSCRIPT
    failing = client().script("return redis.error_reply('boom')")
    with pytest.raises(redis_wire.ResponseError, match="boom"):
        failing()


def test_threads_sharing_a_client_each_get_their_own_replies(key):
    wire = client()
    mixed_up = []

    def hammer(n):
        for i in range(200):
            mine = f"{n}:{i}:" + "x" * (i * 97)
            if wire.execute("ECHO", mine) != mine.encode():
                mixed_up.append(mine)
            if wire.pipeline(("ECHO", mine), ("INCR", f"{key}:{n}"))[0] != mine.encode():
                mixed_up.append(mine)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mixed_up == []
    assert 1 <= len(wire.idle) <= 6
    assert [wire.execute("GET", f"{key}:{n}") for n in range(6)] == [b"200"] * 6


# --- ACL users and the replica process -------------------------------------------------------------


@pytest.fixture
def acl_url(redis_client):
    prefix = protocol.endpoint_prefix(f"end_{uuid.uuid4().hex[:10]}")
    replica_id = f"rep_{uuid.uuid4().hex[:12]}"
    url = redis_acl.replica_redis_url(prefix=prefix, replica_id=replica_id)
    assert redis_acl.user_name(replica_id) in url
    yield prefix, url
    redis_acl.revoke(replica_id)
    for name in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(name)


def test_an_acl_user_reaches_its_keys_and_a_wrong_password_is_refused(acl_url):
    prefix, url = acl_url
    wire = client(url)
    assert wire.execute("SET", f"{prefix}k", "v") == b"OK"
    with pytest.raises(redis_wire.ResponseError, match="NOPERM"):
        wire.execute("GET", "launch:someone-else:k")
    wrong = redis_acl.with_credentials(url, parse_url(url).username, "not-the-password")
    with pytest.raises(redis_wire.ConnectionFailed, match="refused AUTH"):
        client(wrong, connect_retries=0).execute("PING")


def test_a_replica_with_an_acl_user_serves_tasks_inline_and_by_id(acl_url, tmp_path, redis_client):
    prefix, url = acl_url
    with RunningReplica(bundle_file(tmp_path, doubler()), redis_url=url, prefix=prefix) as running:
        inline = running.submit(redis_client, {"args": 4})
        by_id = running.submit(redis_client, {"args": 5}, inline=False)  # START_SCRIPT by EVALSHA / EVAL
        assert running.record(redis_client, inline)["result"] == "8"
        assert running.record(redis_client, by_id)["result"] == "10"


# --- TLS (rediss://) ----------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path):
    """rediss:// in front of the suite's Redis: a TLS proxy with a self-signed certificate for
    localhost (made with the openssl command)."""
    import select
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    cert, private_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(private_key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, private_key)
    upstream = parse_url(settings.REDIS_URL)
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(plain):
        try:
            tls = context.wrap_socket(plain, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a client that refused the certificate
        up = (socket.socket(socket.AF_UNIX) if upstream.path else socket.socket())
        up.connect(upstream.path or (upstream.host, upstream.port))
        with tls, up:
            while True:
                ready = [] if tls.pending() else select.select([tls, up], [], [], 5)[0]
                if tls.pending() or tls in ready:
                    data = tls.recv(MB)
                    if not data:
                        return
                    up.sendall(data)
                if up in ready:
                    data = up.recv(MB)
                    if not data:
                        return
                    tls.sendall(data)

    def accept():
        while True:
            try:
                plain, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=pump, args=(plain,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    credentials = settings.REDIS_URL.split("://", 1)[1].rpartition("@")[0]
    yield f"rediss://{credentials + '@' if credentials else ''}localhost:{listener.getsockname()[1]}", cert
    listener.close()


def test_rediss_checks_the_certificate_unless_told_not_to(tls_redis, key):
    url, cert = tls_redis
    db = parse_url(settings.REDIS_URL).db
    trusted = client(f"{url}/{db}?ssl_ca_certs={cert}")
    value = b"\x00\r\n" * (MB // 3)
    assert trusted.execute("SET", key, value) == b"OK"
    assert trusted.execute("GET", key) == value
    with pytest.raises(redis_wire.ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        client(f"{url}/{db}", connect_retries=0).execute("PING")  # self-signed: not trusted by default
    assert client(f"{url}/{db}?ssl_cert_reqs=none").execute("GET", key) == value
    connection = trusted.connection()  # a value in pieces over TLS (no sendmsg there)
    connection.send_command("SET", key, (value, b"!"))
    assert connection.read_response() == b"OK"
    connection.close()
    assert trusted.execute("GET", key) == value + b"!"


def _dockerfile_files() -> list[str]:
    text = (Path(settings.BASE_DIR) / "docker" / "worker.Dockerfile").read_text().replace("\\\n", " ")
    copy = next(line for line in text.splitlines() if line.startswith("COPY") and "/app/workers/" in line)
    return [word for word in copy.split() if word.startswith("workers/")]


def _ray_files() -> list[str]:
    pytest.importorskip("ray")
    from workers.runtimes import ray

    return list(ray.SHIPPED_FILES)


def _docker_files() -> list[str]:
    from workers.runtimes import docker

    return list(docker.SERVE_FILES)


@pytest.mark.parametrize("files", [_dockerfile_files, _docker_files, _ray_files],
                         ids=["worker image", "derived images", "ray py_modules"])
def test_the_files_each_runtime_ships_run_the_serve_loop_without_redis_py(files, tmp_path):
    for name in files():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(settings.BASE_DIR) / name, tmp_path / name)
    modules = ["workers.serve"] + (["workers.forwarder"] if (tmp_path / "workers" / "forwarder.py").exists() else [])
    probe = (f"import sys, {', '.join(modules)}; import workers; assert workers.__file__.startswith(sys.argv[1]); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))")
    output = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "[]"
