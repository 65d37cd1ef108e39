"""Runs the Helm chart's rendered pods as local processes ("chart boot"): the chart and the code
agree when the rendered commands, environment, ports and probes boot a working stack.

What a kubelet would do, done here without a cluster:
- `Rendered`: the chart rendered by the real Helm engine (helm_python), its objects by kind/name;
- `Container.environment`: envFrom ConfigMaps + env, secretKeyRef values read from the rendered
  Secrets (a reference to a Secret the render did not produce is an error);
- `Loopback`: the one table of edits applied to a rendered environment: cluster addresses to the
  loopback servers standing in for them, container ports to free loopback ports, mounted volumes
  to temp dirs (and the bind-all listen address to 127.0.0.1). Whatever still names a cluster
  address or a path outside a volume afterwards is an error, so nothing ever leaves loopback;
- `PodProcess`: the container's command as a subprocess, probed like kubelet probes it (httpGet
  on the named port, gRPC on the standard grpc.health.v1 service), stopped with SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from tests.chart.render import CHART_DIR, ROOT, objects, render

LOOPBACK = "127.0.0.1"
BIND_ALL = ("0.0.0.0", "::")
SECRET_REF = "secretKeyRef:"

# The settings that hold a container's listen ports, by the name of the containerPort they must equal.
LISTEN_PORT_ENV = {"http": "HELICONE_PORT", "grpc": "HELICONE_GRPC_PORT"}
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}  # a URL without a port
_HOST_PORT_LIST = re.compile(r"^[A-Za-z0-9.-]+:\d+(,[A-Za-z0-9.-]+:\d+)*$")


def chart_defaults() -> dict:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def endpoint_of(address: str) -> str:
    """`host:port` of a URL (the scheme's port when none is given) or of a `host:port`."""
    if "://" in address:
        parts = urlsplit(address)
        return f"{parts.hostname}:{parts.port or DEFAULT_PORTS[parts.scheme]}"
    return address


# ---- the render ---------------------------------------------------------------------------
class Rendered:
    """The chart rendered as `helm install hc -n helicone` would (render.py), every object parsed."""

    def __init__(self, values: dict) -> None:
        self.files = render(values)
        self.objects = objects(self.files)

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def containers(self, kind: str) -> dict[str, Container]:
        """The (single) container of each workload of `kind`, by container name."""
        out = {}
        for obj in self.of_kind(kind):
            pod = obj["spec"]["template"]["spec"]
            assert len(pod["containers"]) == 1, f"{kind} {obj['metadata']['name']}: expected one container"
            c = pod["containers"][0]
            out[c["name"]] = Container(obj["metadata"]["name"], c, pod)
        return out

    def secret_value(self, name: str, key: str, who: str) -> str:
        secret = self.get("Secret", name)
        if secret is None:
            raise LookupError(f"{who} takes a value from Secret {name!r}, which the render did not produce")
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        if key not in (secret.get("data") or {}):
            raise LookupError(f"{who} takes key {key!r} of Secret {name!r}, which has only {sorted(secret.get('data') or {})}")
        return base64.b64decode(secret["data"][key]).decode()

    def config_map_data(self, name: str, who: str) -> dict[str, str]:
        cm = self.get("ConfigMap", name)
        if cm is None:
            raise LookupError(f"{who} takes its environment from ConfigMap {name!r}, which the render did not produce")
        return dict(cm.get("data") or {})


@dataclass
class Container:
    """One container of a rendered pod template."""

    workload: str
    spec: dict
    pod: dict

    @property
    def name(self) -> str:
        return self.spec["name"]

    def environment(self, rendered: Rendered, *, read_secrets: bool = True) -> dict[str, str]:
        """envFrom, then env (env wins, as in Kubernetes); secretKeyRefs resolved from the rendered
        Secrets, or without `read_secrets` left as `secretKeyRef:<name>/<key>` (existingSecrets)."""
        who = f"container {self.name} of {self.workload}"
        env: dict[str, str] = {}
        for source in self.spec.get("envFrom") or []:
            if "configMapRef" not in source:
                raise ValueError(f"{who}: unsupported envFrom {source}")
            data = rendered.config_map_data(source["configMapRef"]["name"], who)
            env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
        for entry in self.spec.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            elif "secretKeyRef" in entry.get("valueFrom", {}):
                ref = entry["valueFrom"]["secretKeyRef"]
                env[entry["name"]] = (rendered.secret_value(ref["name"], ref["key"], f"{who} ({entry['name']})") if read_secrets
                                      else f"{SECRET_REF}{ref['name']}/{ref['key']}")
            else:
                raise ValueError(f"{who}: unsupported env entry {entry}")
        return env

    @property
    def ports(self) -> dict[str, int]:
        return {p["name"]: int(p["containerPort"]) for p in self.spec.get("ports") or []}

    def probe_port(self, probe: dict) -> tuple[str, int]:
        """("http"|"grpc", containerPort) a probe targets; a named port must be one of the container's."""
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            if isinstance(port, str):
                assert port in self.ports, f"{self.name}: probe port {port!r} is not a containerPort name ({self.ports})"
                return "http", self.ports[port]
            return "http", int(port)
        if "grpc" in probe:
            return "grpc", int(probe["grpc"]["port"])
        raise ValueError(f"{self.name}: unsupported probe {probe}")

    @property
    def grace_seconds(self) -> float:
        return float(self.pod.get("terminationGracePeriodSeconds", 30))

    @property
    def pre_stop_seconds(self) -> float:
        """Seconds of a `sleep N` preStop hook (kubelet runs it first, inside the grace period)."""
        cmd = ((self.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
        if not cmd:
            return 0.0
        assert cmd[0] == "sleep" and len(cmd) == 2, f"{self.name}: unexpected preStop {cmd}"
        return float(cmd[1])

    def argv(self) -> list[str]:
        return local_argv(list(self.spec["command"]) + list(self.spec.get("args") or []))

    def module(self) -> str:
        cmd = self.spec["command"]
        assert cmd[:2] == ["python", "-m"] and len(cmd) == 3, f"{self.name}: command {cmd} is not `python -m <module>`"
        return cmd[2]

    def check_listen_ports(self, env: dict[str, str]) -> None:
        """The settings that hold listen ports equal the containerPorts of that name, and every
        probe targets one of them (a mismatch leaves the pod never ready, or never probed)."""
        for port_name, var in LISTEN_PORT_ENV.items():
            if port_name in self.ports:
                assert env.get(var) == str(self.ports[port_name]), (
                    f"{self.name}: {var}={env.get(var)!r} but containerPort {port_name!r} is {self.ports[port_name]}")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in self.spec:
                proto, port = self.probe_port(self.spec[kind])
                expected = self.ports.get(proto)  # httpGet probes the port named http, gRPC probes the one named grpc
                assert port == expected, f"{self.name}: {kind} ({proto}) targets port {port}, not containerPort {proto!r} ({expected})"


def local_argv(cmd: list[str]) -> list[str]:
    """A command as the image runs it, with this interpreter for the image's `python`."""
    assert cmd and cmd[0] == "python", f"command {cmd} does not start with python"
    return [sys.executable, *cmd[1:]]


# ---- the rewrite table ----------------------------------------------------------------------
@dataclass
class Loopback:
    """Edits of a rendered environment, and nothing else: cluster `host:port` -> a loopback server,
    containerPort -> a free loopback port, volume mountPath -> a temp dir."""

    endpoints: dict[str, str]  # "host:port" (as rendered) -> "127.0.0.1:port"
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port
    volumes: dict[str, Path] = field(default_factory=dict)  # mountPath -> temp dir

    def _endpoint(self, var: str, host_port: str) -> str:
        if host_port not in self.endpoints:
            raise LookupError(f"{var} names {host_port}, for which the boot has no loopback server "
                              f"(known: {sorted(self.endpoints)})")
        return self.endpoints[host_port]

    def value(self, var: str, value: str) -> str:
        if value in BIND_ALL:
            return LOOPBACK
        if var in LISTEN_PORT_ENV.values() and value.isdigit():
            return str(self.ports[int(value)])
        if "://" in value and urlsplit(value).hostname:
            parts = urlsplit(value)
            target = self._endpoint(var, endpoint_of(value))
            userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            return parts._replace(netloc=userinfo + target).geturl()
        if _HOST_PORT_LIST.match(value):
            return ",".join(self._endpoint(var, hp) for hp in value.split(","))
        for mount, local in sorted(self.volumes.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(local) + value[len(mount.rstrip("/")):]
        if value.startswith("/"):
            raise LookupError(f"{var}={value} is outside every mounted volume (the root filesystem is read-only)")
        return value

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {k: self.value(k, v) for k, v in env.items()}


def volumes_for(container: Container, root: Path) -> dict[str, Path]:
    out = {}
    for mount in container.spec.get("volumeMounts") or []:
        path = root / mount["name"]
        path.mkdir(parents=True, exist_ok=True)
        out[mount["mountPath"]] = path
    return out


def local_pod(container: Container, rendered: Rendered, endpoints: dict[str, str], root: Path) -> tuple[PodProcess, dict[int, int]]:
    """The container as a local process (not started) and its containerPort -> loopback port map.
    Its rendered environment gets the Loopback edits only; `root` holds its volumes, its log and
    an empty working dir that doubles as HOME (the read-only root filesystem of the pod)."""
    from tests.support.net import free_port

    env = container.environment(rendered)
    container.check_listen_ports(env)
    ports = {p: free_port() for p in container.ports.values()}
    volumes = volumes_for(container, root / "volumes")
    fs_root = root / "root"
    fs_root.mkdir(parents=True, exist_ok=True)
    local = Loopback(endpoints, ports, volumes).environment(env)
    full = {**base_environment(fs_root, volumes.get("/tmp", fs_root)), **local}
    return PodProcess(container.name, container.argv(), full, fs_root, root / f"{container.name}.log"), ports


# ---- processes ----------------------------------------------------------------------------
def base_environment(home: Path, tmp: Path) -> dict[str, str]:
    """What the image gives every container besides the rendered environment: PATH with the
    interpreter's bin dir, the image's PYTHONUNBUFFERED, a HOME, TMPDIR on the /tmp volume, and
    PYTHONPATH when the caller runs from a source checkout (the image has the packages installed)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1",
           "HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class PodProcess:
    """A container's command as a local process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log_path
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> PodProcess:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def failure(self, what: str) -> AssertionError:
        rc = self.proc.poll() if self.proc else None
        state = f"exited with {rc}" if rc is not None else "still running"
        return AssertionError(f"{self.name}: {what} ({state}); log tail:\n{self.log_tail()}")

    def run(self, timeout: float) -> int:
        """start(), wait for the exit; returns the exit code."""
        self.start()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.failure(f"did not finish within {timeout}s") from None

    def terminate(self) -> None:
        """SIGTERM, as kubelet sends it (after the preStop hook)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, until: float) -> int | None:
        """The exit code once the process exits, None if it still runs at monotonic time `until`."""
        try:
            return self.proc.wait(max(until - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def probe_once(probe: dict, kind_port: tuple[str, int], timeout: float) -> bool:
    """One probe as kubelet runs it against the pod's address (here loopback)."""
    proto, port = kind_port
    if proto == "http":
        get = probe["httpGet"]
        url = f"{get.get('scheme', 'HTTP').lower()}://{LOOPBACK}:{port}{get.get('path', '/')}"
        try:
            return 200 <= httpx.get(url, timeout=timeout).status_code < 400
        except httpx.HTTPError:
            return False
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_probes(pod: PodProcess, container: Container, ports: dict[int, int], kinds: tuple[str, ...], timeout: float,
                interval: float = 0.2) -> float:
    """Seconds from the process start until each probe of `kinds` has passed, in order (kubelet
    runs readiness only after the startup probe passed). Probes every `interval`, not every
    periodSeconds, to measure; each call is bounded by the probe's timeoutSeconds."""
    deadline = pod.started + timeout
    for kind in kinds:
        probe = container.spec.get(kind)
        assert probe is not None, f"{container.name} has no {kind}"
        proto, port = container.probe_port(probe)
        target = (proto, ports[port])
        while not probe_once(probe, target, float(probe.get("timeoutSeconds", 1))):
            if pod.proc.poll() is not None:
                raise pod.failure(f"exited before its {kind} passed")
            if time.monotonic() > deadline:
                raise pod.failure(f"{kind} did not pass within {timeout}s")
            time.sleep(interval)
    return time.monotonic() - pod.started


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout}s")
        time.sleep(0.1)


# ---- the backing servers ----------------------------------------------------------------------
@dataclass
class BackingServers:
    """Loopback stand-ins for what the chart expects in the cluster, each `127.0.0.1:port`."""

    postgres: str  # embedded Postgres (Unix socket only) behind a loopback TCP forwarder
    kafka: str  # Tansu, in memory
    clickhouse: str  # chDB behind the ClickHouse HTTP protocol
    s3: str  # moto
    upstream: str  # the fake OpenAI/Anthropic API
    seconds: float  # to start them all


@contextlib.contextmanager
def backing_servers(tmp: Path, bucket: str):
    """Starts every backing server (the subprocesses while Postgres initialises) and creates the
    bucket (in a cluster, the object store's own setup makes it; the chart does not)."""
    from helicone_runner.embedded import EmbeddedKafka, EmbeddedPostgres, terminate

    from tests.support.fault_proxy import ThreadedPostgresProxy
    from tests.support.net import free_port

    t0 = time.monotonic()
    port = {name: free_port() for name in ("kafka", "clickhouse", "s3", "upstream")}
    procs: list[subprocess.Popen] = []
    kafka = EmbeddedKafka(LOOPBACK, port["kafka"], tmp / "kafka.log")
    pg = EmbeddedPostgres(tmp / "pg")
    proxy = None

    def spawn(argv: list[str], log: str) -> subprocess.Popen:
        with open(tmp / log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    try:
        (tmp / "chdb").mkdir(parents=True)
        ch = spawn([sys.executable, "-m", "tests.support.chdb_http", "--host", LOOPBACK, "--port", str(port["clickhouse"]),
                    "--path", str(tmp / "chdb")], "clickhouse.log")
        s3 = spawn([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port["s3"])], "s3.log")
        upstream = spawn([sys.executable, "-m", "tests.support.fake_upstream", "--host", LOOPBACK, "--port", str(port["upstream"])],
                         "upstream.log")
        kafka.start()
        proxy = ThreadedPostgresProxy(pg.start())
        addr = {name: f"{LOOPBACK}:{p}" for name, p in port.items()}
        wait_http(f"http://{addr['clickhouse']}/ping", ch, 30, "chdb_http")
        wait_http(f"http://{addr['s3']}/", s3, 30, "moto")
        wait_http(f"http://{addr['upstream']}/_received", upstream, 30, "fake upstream")
        import boto3

        boto3.client("s3", endpoint_url=f"http://{addr['s3']}", region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup").create_bucket(Bucket=bucket)
        yield BackingServers(postgres=f"{LOOPBACK}:{proxy.proxy.port}", kafka=kafka.bootstrap, clickhouse=addr["clickhouse"],
                             s3=addr["s3"], upstream=addr["upstream"], seconds=time.monotonic() - t0)
    finally:
        for proc in reversed(procs):
            terminate(proc, grace=10)
        kafka.stop()
        if proxy is not None:
            proxy.close()
        pg.stop()
