"""A private 6-node Redis Cluster (3 primaries, 3 replicas) on free loopback ports.

Each node keeps its ``nodes.conf`` in a directory of its own, so a killed node can be
started again and rejoin (as a replica of whoever took over its slots).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from ._poll import eventually_sync
from ._redis_server import free_port

#: Short enough for a quick failover, long enough not to fail nodes over on a busy machine.
NODE_TIMEOUT_MS = 2500
_START_WITHIN = 30.0


class NodeProcess:
    """One ``redis-server --cluster-enabled yes``, keeping nothing but nodes.conf on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.bus_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def info(self, command: str) -> dict[str, str]:
        """``CLUSTER INFO`` or ``INFO replication`` as a dict ({} if the node is down)."""
        try:
            with self.client() as client:
                text = client.execute_command(*command.split())
        except (redis.RedisError, OSError):
            return {}
        if isinstance(text, dict):
            return {str(key): str(value) for key, value in text.items()}
        lines = (text.decode() if isinstance(text, bytes) else str(text)).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def info_list(self, *command: str) -> list[bytes]:
        with self.client() as client:
            found: list[bytes] = client.execute_command(*command)
            return found

    def start(self) -> None:
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)),
                    *("--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        except FileNotFoundError as exc:
            raise RuntimeError(
                "the tests need redis-server on PATH (Debian package redis-server)"
            ) from exc
        eventually_sync(self._answers, within=10)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a word, as a crashed host would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class LocalRedisCluster:
    """Six nodes joined by ``redis-cli --cluster create --cluster-replicas 1``."""

    def __init__(self, directory: Path, *, size: int = 6) -> None:
        self.nodes = [NodeProcess(directory / f"node-{index}") for index in range(size)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=_START_WITHIN,
        )
        self.wait_healthy()

    def wait_healthy(self, within: float = _START_WITHIN) -> None:
        """Wait until every running node says cluster_state:ok and sees all slots served,
        and every replica is in sync with its primary."""

        def healthy(node: NodeProcess) -> bool:
            info = node.info("CLUSTER INFO")
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
            replication = node.info("INFO replication")
            return replication.get("role") == "master" or (
                replication.get("master_link_status") == "up"
            )

        eventually_sync(
            lambda: all(healthy(node) for node in self.nodes if node.process is not None),
            within=within,
        )

    def slot_of(self, key: str) -> int:
        node = next(node for node in self.nodes if node.process is not None)
        with node.client() as client:
            slot: int = client.execute_command("CLUSTER KEYSLOT", key)
            return slot

    def move_slot(self, slot: int, target: NodeProcess) -> None:
        """Reshard one slot to ``target`` (a primary), keys and all, as
        ``redis-cli --cluster reshard`` does."""
        source = self.owner_of(slot)
        with source.client() as source_client, target.client() as target_client:
            source_id = source_client.execute_command("CLUSTER MYID")
            target_id = target_client.execute_command("CLUSTER MYID")
            target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source_client.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
            for client in (target_client, source_client):
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for node in self.primaries():  # replicas learn it from their primaries
            if node not in (source, target):
                with node.client() as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def owner_of(self, slot: int) -> NodeProcess:
        node = next(node for node in self.nodes if node.process is not None)
        with node.client() as client:
            for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return self.node_at(int(primary[1]))
        raise RuntimeError(f"no primary serves slot {slot}")

    def primaries(self) -> list[NodeProcess]:
        return [
            node
            for node in self.nodes
            if node.process is not None and node.info("INFO replication").get("role") == "master"
        ]

    def node_at(self, port: int) -> NodeProcess:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
