"""A router replica killed -9: how long its clients wait before the other replica carries on, and that
the leases short enough for that do not flap on a busy machine.

Two router processes share the inbound partitions; clients write steadily (a new chat every 50 ms,
spread over every partition). The gap is the recovery figure of the fault suite (tests/support/chaos.py):
the longer of the pause in transcript lines across the kill and the longest wait of a client message
received around it between being stored and the router writing it into the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js import api as js_api
from peers.natsproxy import NatsProxy
from prometheus_client import REGISTRY
from support import apply_lines, inbound, publish, running_router
from support.chaos import RECOVERY_TARGETS, WINDOW, elections_after, longest_wait, pause_across, read_routed
from support.servers import NatsCluster, ServiceProcess, free_port
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.envelopes import HistoryEntry, decoder
from router import inbound as router_inbound

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LINES = """
[operators.anna]
name = "Anna"
[[lines]]
id = "support"
name = "Support"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
operators = ["anna"]
wait_seconds = 60
"""


@pytest.fixture
def routers(nats_server: Any, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    procs = []
    for name in ("router-a", "router-b"):
        env = {
            "OPENLINES_NATS_URL": nats_server.url,
            "OPENLINES_HTTP_PORT": str(free_port()),
            "OPENLINES_METRICS_PORT": str(free_port()),
        }
        procs.append(ServiceProcess(name, "router", env, tmp_path))  # the shipped lease and ack_wait
    yield procs
    for p in procs:
        p.stop()


class Writer:
    """Clients writing steadily: a new chat every ``every`` seconds (each its first message)."""

    def __init__(self, nc: Any, prefix: str, every: float = 0.05) -> None:
        self.nc, self.prefix, self.every = nc, prefix, every
        self.sent = 0

    async def run(self, until: asyncio.Event) -> None:
        env = None
        while not until.is_set():
            # A message not stored (the stream without a leader during an election) is tried again as it was,
            # as a gateway holds its webhook and retries: its wait counts from when it first came.
            env = env or inbound(f"{self.prefix}{self.sent}", "hello", "m1")
            with contextlib.suppress(Exception):
                await publish(self.nc, env)
                self.sent += 1
                env = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), timeout=self.every)  # the clients' pace, not a wait


@contextlib.asynccontextmanager
async def writing(writer: Writer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def routing(nc: Any, routers: list[ServiceProcess], *, lines: bool = True) -> None:
    """The lines applied (unless done already), every replica started, the partitions split between them."""
    if lines:
        await apply_lines(nc, LINES)
    for r in routers:
        r.start()
    await wait_for(lambda: split_evenly(nc), timeout=60, what="the partitions split evenly between the two replicas")


async def split_evenly(nc: Any) -> bool:
    return await split_evenly_over(nc, 2)


async def split_evenly_over(nc: Any, replicas: int) -> bool:
    owners = []
    try:
        kv = await nc.jetstream().key_value(subjects.KV_ROUTER)  # made by the first replica
        for p in range(subjects.PARTITIONS):
            owners.append((await kv.get(f"lease.{p}")).value)
    except Exception:
        return False
    return len(set(owners)) == replicas and all(owners.count(o) == subjects.PARTITIONS // replicas for o in set(owners))


async def all_routed(nc: Any, writer: Writer) -> Any:
    """Every client's message in a transcript; then the transcripts with the time each line was stored."""

    async def everyone() -> Any:
        try:
            routed, _ = await read_routed(nc.jetstream(), subjects.STREAM_HIST, subjects.history_all())
        except Exception:  # a cluster node just back: the stream's leader may be moving, read again
            return None
        return routed if len(routed.messages) >= writer.sent else None

    return await wait_for(everyone, timeout=60, interval=0.5, what=f"all {writer.sent} messages routed")


async def test_a_router_replica_killed_9_holds_its_clients_up_less_than_2_s(nc: Any, routers: list[ServiceProcess]) -> None:
    await routing(nc, routers)
    writer = Writer(nc, "k")
    async with writing(writer):
        await wait_for(lambda: writer.sent >= 40, timeout=30, what="clients writing")
        killed_at = time.time()
        routers[0].kill()  # with messages in hand, on half of the partitions
        await asyncio.sleep(0.5)  # down for a moment, then started again as an orchestrator would
        routers[0].start()
        restarted_at = time.time()
        await wait_for(lambda: writer.sent >= 40 + 200, timeout=60, what="clients writing after the kill")
    routed = await all_routed(nc, writer)
    pause = pause_across(routed.lines, killed_at) or 0.0
    wait = longest_wait(routed.messages, killed_at, WINDOW)
    gap = max(pause, wait)
    worst = max(
        ((r - t, t - killed_at) for t, r in routed.messages if killed_at - 1 <= t <= killed_at + WINDOW), default=(0.0, 0.0)
    )
    print(
        f"\nrouter replica kill -9: gap {gap:.2f} s (pause {pause:.2f} s, longest message wait {wait:.2f} s,"
        f" of a message received {worst[1]:+.2f} s after the kill; restarted {restarted_at - killed_at:.2f} s after it)"
    )
    # The target, stretched by the machine's load like every deadline in the suite. With leases and
    # ack_wait of 10 s it was 11 s; waiting for the lease (1.5 s) and the in-hand message's ack_wait (1.5 s),
    # 1.35-2.29 s. Now the survivor sees the killed replica's connection gone at its next round (every 0.5 s),
    # takes its leases at once and hands its message in hand back (decision 027).
    target = RECOVERY_TARGETS["router"]
    limit = scaled(target)
    assert gap < limit, f"gap {gap:.2f} s after a router replica kill -9 (target {target} s, stretched to {limit:.1f} s)"
    assert all(r.exited() is None for r in routers)


async def test_a_nats_node_of_three_killed_9_routing_carries_on_after_the_election(tmp_path: Path) -> None:
    """The node leading the inbound stream dies (and comes back a moment later): the routers, connected
    through relays to every node, carry on once the cluster has elected new leaders."""
    cluster = NatsCluster(tmp_path / "cluster", args=["--no_advertise"])  # the routers only know the relays
    cluster.start()
    relays = [NatsProxy(n.port) for n in cluster.nodes]
    routers: list[ServiceProcess] = []
    nc = await bus.connect(cluster.url, "test", first_attempts=5)
    try:
        for r in relays:
            await r.start()

        async def bootstrapped() -> bool:
            try:
                await bus.bootstrap(nc.jetstream(), replicas=3)
            except Exception:  # the cluster still electing its leaders
                return False
            return True

        await wait_for(bootstrapped, timeout=60, interval=0.5, what="JetStream ready for the streams")
        await apply_lines(nc, LINES)
        for name in ("router-a", "router-b"):
            env = {
                "OPENLINES_NATS_URL": ",".join(r.url for r in relays),
                "OPENLINES_REPLICAS": "3",
                "OPENLINES_HTTP_PORT": str(free_port()),
                "OPENLINES_LOG_LEVEL": "info",
            }
            routers.append(ServiceProcess(name, "router", env, tmp_path))
        await routing(nc, routers, lines=False)
        leader = (await nc.jetstream().stream_info(subjects.STREAM_IN)).cluster.leader
        node = next(n for n in cluster.nodes if f"-n {leader} " in " ".join(n.args) + " ")
        writer = Writer(nc, "n")
        async with writing(writer):
            await wait_for(lambda: writer.sent >= 40, timeout=30, what="clients writing")
            killed_at = time.time()
            node.stop(kill=True)
            await asyncio.sleep(1.0)  # down for a moment
            node.start()
            await wait_for(lambda: writer.sent >= 40 + 300, timeout=120, what="clients writing after the kill")
        routed = await all_routed(nc, writer)
        pause = pause_across(routed.lines, killed_at) or 0.0
        wait = longest_wait(routed.messages, killed_at, WINDOW)
        gap = max(pause, wait)
        election = elections_after(cluster.nodes, killed_at) - killed_at
        print(
            f"\nNATS node kill -9: gap {gap:.2f} s (pause {pause:.2f} s, longest message wait {wait:.2f} s);"
            f" the cluster's new leaders {election:.2f} s after the kill"
        )
        # Reported, not asserted: the server's raft elects new leaders 4-9 s after a leader stops (fixed in
        # nats-server), and a JetStream request sent to a stream without a leader may still wait out its
        # 5 s timeout after that - neither is the routers' to shorten. What is asserted: every message
        # was routed, once the cluster was whole again, and no router gave up.
        assert all(r.exited() is None for r in routers)
    finally:
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in routers))  # they drain through the relays
        await nc.close()
        for r in relays:
            await r.stop()
        cluster.stop()
        refused = cluster.violations()
        assert not refused, "NATS refused what a service did:\n" + "\n".join(refused)


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


async def leases_lost(port: int) -> float:
    return await metric(port, "openlines_router_partition_leases_lost_total")


async def test_short_leases_do_not_flap_on_a_busy_machine(nc: Any, routers: list[ServiceProcess]) -> None:
    """Two busy loops take both cores while the replicas route: no healthy replica loses a lease."""
    await routing(nc, routers)
    kv = await nc.jetstream().key_value(subjects.KV_ROUTER)
    owners = {p: (await kv.get(f"lease.{p}")).value for p in range(subjects.PARTITIONS)}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # noqa: ASYNC220 - returns at once
    try:
        writer = Writer(nc, "b")
        async with writing(writer):
            # 20 s of routing under the busy loops: some 13 lease times, 40 renewal rounds per replica.
            await wait_for(lambda: writer.sent >= 400, timeout=120, what="clients writing under the busy loops")
        await all_routed(nc, writer)
        lost = [await leases_lost(int(r.env["OPENLINES_METRICS_PORT"])) for r in routers]
        now = {p: (await kv.get(f"lease.{p}")).value for p in range(subjects.PARTITIONS)}
    finally:
        for b in busy:
            b.kill()
            b.wait()
    assert lost == [0.0, 0.0], f"leases lost under load: {lost}"
    assert now == owners, "partitions changed hands between two healthy replicas"
    assert all(r.exited() is None for r in routers)


async def test_a_lease_bucket_made_by_an_older_release_gets_the_short_lease(nc: Any, nats_server: Any) -> None:
    """Renewing every half second leases a bucket keeps for 10 s would work, but a dead replica would hold
    its partitions for 10 s: the router gives the bucket its own lease time."""
    await apply_lines(nc, LINES)
    await nc.jetstream().create_key_value(bucket=subjects.KV_ROUTER, history=1, ttl=10)
    async with running_router(nats_server.url) as router:
        info = await nc.jetstream().stream_info(f"KV_{subjects.KV_ROUTER}")
        assert info.config.max_age == router.settings.partition_lease_seconds == 1.5
        await wait_for(lambda: split_evenly_over(nc, 1), timeout=30, what="the one replica holding every partition")


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _killed_holder(nc: Any, nats_server: Any, p: int, *, in_hand: int, first: list[Any], then: list[Any]) -> Any:
    """Partition ``p`` as a replica killed -9 leaves it: its lease still good, ``first`` published and delivered to
    it (in hand, never acknowledged), ``then`` published after (never delivered). Returns the lease bucket."""
    js = nc.jetstream()
    durable = f"router-p{p}"
    await js.add_consumer(
        subjects.STREAM_IN,
        js_api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,
            max_ack_pending=in_hand,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subject=subjects.inbound_partition(p),
        ),
    )
    kv = await js.create_key_value(bucket=subjects.KV_ROUTER, history=1, ttl=30)
    await kv.put("member.killedreplica", b"1")
    await kv.put(f"lease.{p}", b"killedreplica")
    for env in first:
        await publish(nc, env)
    holder = await bus.connect(nats_server.url, "holder", first_attempts=5)
    psub = await holder.jetstream().pull_subscribe_bind(durable=durable, stream=subjects.STREAM_IN)
    got: list[Any] = []
    while len(got) < len(first):
        got += await psub.fetch(len(first) - len(got), timeout=30)
    assert all(m.metadata.num_delivered == 1 for m in got)
    for env in then:
        await publish(nc, env)
    await holder.close()  # its connection gone, the messages never acknowledged
    return kv


def _chats_in_partition(p: int, n: int) -> list[str]:
    chats = [f"c{i}" for i in range(10_000) if subjects.partition_of("webchat", "demo", f"c{i}") == p]
    return chats[:n]


async def _routed_in(js: Any) -> list[HistoryEntry]:
    _, datas = await read_routed(js, subjects.STREAM_HIST, subjects.history_all())
    return [e for e in map(decoder(HistoryEntry).decode, datas) if e.direction == "in"]


async def test_a_killed_holders_message_in_hand_is_handed_back_at_once(nc: Any, nats_server: Any) -> None:
    """A replica killed -9 with a message in hand and its lease still good: a replica that starts sees its
    connection gone, takes the lease at once (not after the lease, 30 s here) and has the message delivered
    again (not after ack_wait, 60 s here). Both paths are told apart by the router's counters."""
    await apply_lines(nc, LINES)
    js = nc.jetstream()
    p = subjects.partition_of("webchat", "demo", "h1")
    kv = await _killed_holder(nc, nats_server, p, in_hand=1, first=[inbound("h1", "hello", "m1")], then=[])
    taken = _count("openlines_router_partitions_taken_from_gone_total")
    handed = _count("openlines_router_inbound_handed_back_total")

    async def routed() -> list[HistoryEntry] | None:
        return await _routed_in(js) or None

    async with running_router(nats_server.url, partition_lease_seconds=30, ack_wait=60):
        ins = await wait_for(routed, timeout=20, what="the message the killed replica had in hand routed")
        lease = await kv.get(f"lease.{p}")
    assert [e.text for e in ins] == ["hello"]
    assert lease.value != b"killedreplica"
    assert _count("openlines_router_partitions_taken_from_gone_total") - taken == 1, "taken only when its lease ran out"
    assert _count("openlines_router_inbound_handed_back_total") - handed == 1, "redelivered only after ack_wait"


async def test_every_message_a_killed_holder_had_in_hand_is_handed_back_at_once(nc: Any, nats_server: Any) -> None:
    """Decision 029: a partition's holder has several clients' messages in hand. Killed -9, all of them are
    delivered again at once to the replica that takes the partition (not after ack_wait, 60 s here), and each
    client's messages are routed in the order they were sent."""
    await apply_lines(nc, LINES)
    js = nc.jetstream()
    a, b, c = _chats_in_partition(p := subjects.partition_of("webchat", "demo", "c0"), 3)
    first = [inbound(a, "a-1", "1"), inbound(b, "b-1", "1"), inbound(c, "c-1", "1")]
    then = [inbound(a, "a-2", "2"), inbound(c, "c-2", "2")]
    await _killed_holder(nc, nats_server, p, in_hand=8, first=first, then=then)
    handed = _count("openlines_router_inbound_handed_back_total")

    async def routed() -> list[HistoryEntry] | None:
        ins = await _routed_in(js)
        return ins if len(ins) == 5 else None

    async with running_router(nats_server.url, partition_lease_seconds=30, ack_wait=60, in_hand=8):
        ins = await wait_for(routed, timeout=20, what="every message of the partition routed")
    order = [e.text for e in ins]
    assert sorted(order) == ["a-1", "a-2", "b-1", "c-1", "c-2"]
    assert order.index("a-1") < order.index("a-2") and order.index("c-1") < order.index("c-2"), order
    assert _count("openlines_router_inbound_handed_back_total") - handed == 3


async def test_nothing_newer_of_a_partition_starts_before_what_a_killed_holder_had_in_hand(
    nc: Any, nats_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 029: a message of the killed holder's that is not handed back (here only the oldest one is) comes
    again after ack_wait; the client's next message, delivered at once, waits for it - it never overtakes. The
    newer messages held back fill most of what may be in hand (3 of 4)."""
    monkeypatch.setattr(router_inbound, "HAND_BACK_AT_MOST", 1)
    await apply_lines(nc, LINES)
    js = nc.jetstream()
    a, b, c, d = _chats_in_partition(p := subjects.partition_of("webchat", "demo", "c0"), 4)
    first = [inbound(b, "b-1", "1"), inbound(a, "a-1", "1")]
    then = [inbound(a, "a-2", "2"), inbound(c, "c-1", "1"), inbound(d, "d-1", "1")]
    await _killed_holder(nc, nats_server, p, in_hand=8, first=first, then=then)

    async def routed() -> list[HistoryEntry] | None:
        ins = await _routed_in(js)
        return ins if len(ins) == 5 else None

    # the router's ack_wait (2 s) replaces the consumer's 60 s: a-1 comes again 2 s after its delivery
    async with running_router(nats_server.url, partition_lease_seconds=30, ack_wait=2, in_hand=4):
        ins = await wait_for(routed, timeout=20, what="every message of the partition routed")
    order = [e.text for e in ins]
    assert sorted(order) == ["a-1", "a-2", "b-1", "c-1", "d-1"]
    assert order.index("a-1") < order.index("a-2"), order


async def test_a_message_handed_back_after_a_read_by_sequence_failed_is_routed_when_the_read_works_again(
    nc: Any, nats_server: Any
) -> None:
    """Decision 033: a replica takes a partition whose killed holder had a message in hand, and its read of the
    partition's messages by sequence times out (NATS slow: the request lost, as when a node of three is killed).
    The message is handed back; nats-server keeps the consumer's acknowledgement floor below it (another
    partition's message lies between) until it is acknowledged - so waiting for the floor would wait for ever.
    The router reads again and routes it. (Found by a loaded CI run: 340 messages never routed after a node kill.)"""
    await apply_lines(nc, LINES)
    js = nc.jetstream()
    p = subjects.partition_of("webchat", "demo", "h1")
    other = next(c for c in (f"o{i}" for i in range(1000)) if subjects.partition_of("webchat", "demo", c) != p)
    await publish(nc, inbound(other, "another partition's", "1"))  # stream seq 1, before the partition's message
    await _killed_holder(nc, nats_server, p, in_hand=1, first=[inbound("h1", "hello", "m1")], then=[])
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        lost = proxy.drop(f"$JS.API.STREAM.MSG.GET.{subjects.STREAM_IN}", times=2)

        async def routed() -> list[str] | None:
            texts = [e.text for e in await _routed_in(js)]
            return texts if "hello" in texts else None

        async with running_router(proxy.url, partition_lease_seconds=30, ack_wait=60):
            texts = await wait_for(routed, timeout=60, what="the handed-back message routed")
    finally:
        await proxy.stop()
    assert lost.fired == 2, "the read by sequence never failed: the test did not test"
    assert texts.count("hello") == 1, texts


async def test_a_replica_whose_nats_connection_drops_keeps_or_regains_its_partitions(
    nc: Any, nats_server: Any, tmp_path: Path
) -> None:
    """One replica reaches NATS through a relay that drops its connection: once while the server stays
    reachable (it is back within a moment), once with new connections refused for a while (the other replica
    takes its partitions, it gets its share back when it returns). Every client's message is routed once."""
    await apply_lines(nc, LINES)
    relay = NatsProxy(nats_server.port)
    await relay.start()
    procs = []
    for name, url in (("router-a", relay.url), ("router-b", nats_server.url)):
        env = {"OPENLINES_NATS_URL": url, "OPENLINES_HTTP_PORT": str(free_port()), "OPENLINES_METRICS_PORT": str(free_port())}
        procs.append(ServiceProcess(name, "router", env, tmp_path))
    try:
        await routing(nc, procs, lines=False)
        writer = Writer(nc, "d")
        async with writing(writer):
            await wait_for(lambda: writer.sent >= 40, timeout=30, what="clients writing")
            assert relay.drop_connections() >= 1  # a blip: it reconnects at once
            await wait_for(lambda: writer.sent >= 120, timeout=60, what="clients writing after the blip")
            await wait_for(lambda: split_evenly(nc), timeout=60, what="the partitions split evenly after the blip")
            relay.refuse(2.0)
            assert relay.drop_connections() >= 1  # away for longer: its partitions move to router-b
            await wait_for(lambda: writer.sent >= 200, timeout=60, what="clients writing while it is away")
            await wait_for(lambda: split_evenly(nc), timeout=60, what="the partitions split evenly after it came back")
            await wait_for(lambda: writer.sent >= 260, timeout=60, what="clients writing after it came back")
        await all_routed(nc, writer)
        _, datas = await read_routed(nc.jetstream(), subjects.STREAM_HIST, subjects.history_all())
        ins = [e.id for e in map(decoder(HistoryEntry).decode, datas) if e.direction == "in"]
        taken_from_a = await metric(
            int(procs[1].env["OPENLINES_METRICS_PORT"]), "openlines_router_partitions_taken_from_gone_total"
        )
        print(f"\npartitions router-b took from router-a while its connection was gone: {taken_from_a:.0f}")
        assert len(ins) == writer.sent, f"{len(ins)} client messages in the transcripts, {writer.sent} written"
        assert len(set(ins)) == len(ins), "a client message routed twice"
        assert taken_from_a >= 1, "router-a's partitions were not taken while it was unreachable"
        assert all(r.exited() is None for r in procs)
    finally:
        for r in procs:
            r.stop()
        await relay.stop()


async def _waiting_pulls(js: Any, durable: str) -> int:
    try:
        return int((await js.consumer_info(subjects.STREAM_IN, durable)).num_waiting or 0)
    except Exception:
        return 0


async def test_a_clients_later_message_waits_for_the_earlier_one_an_old_holders_pull_request_got(
    nc: Any, nats_server: Any
) -> None:
    """Decision 029, amended: a replica that lost partition p's lease (its renewal came late, or a probe took it)
    still has a pull request outstanding on the partition consumer - it has not noticed yet. The replica that took
    p read the consumer before the client wrote: nothing was in hand. The client's first message goes to the old
    holder's pull request, its second to the new holder, which must not route the second before the first (the
    old holder, stopping, gives the first back). Another client's message of the partition is not held up."""
    await apply_lines(nc, LINES)
    js = nc.jetstream()
    x, y = _chats_in_partition(p := subjects.partition_of("webchat", "demo", "c0"), 2)
    durable = f"router-p{p}"
    await js.add_consumer(
        subjects.STREAM_IN,
        js_api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,
            max_ack_pending=8,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subject=subjects.inbound_partition(p),
        ),
    )
    old = await bus.connect(nats_server.url, "old-holder", first_attempts=5)
    try:
        inbox = old.new_inbox()
        delivered = await old.subscribe(inbox)
        # The old holder's pull request, outstanding for longer than this test (a fetch it sent before it lost p).
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_IN}.{durable}"
        await old.publish(pull, b'{"batch": 1, "expires": 120000000000}', reply=inbox)
        await old.flush()
        await wait_for(lambda: _waiting_pulls(js, durable), what="the old holder's pull request waiting")
        async with running_router(nats_server.url, partition_lease_seconds=30, ack_wait=60, in_hand=8):
            await wait_for(lambda: split_evenly_over(nc, 1), timeout=30, what="the router holding every partition")

            async def both_pull() -> bool:
                return await _waiting_pulls(js, durable) >= 2

            await wait_for(both_pull, timeout=30, what="the router pulling on the partition beside the old holder")
            await publish(nc, inbound(x, "first", "1"))
            first = await delivered.next_msg(timeout=scaled(10))  # the old holder's pull request was served first
            assert first.headers is None or "Status" not in first.headers, first.headers
            await publish(nc, inbound(x, "second", "2"))
            await publish(nc, inbound(y, "other", "1"))

            async def other_routed() -> list[str] | None:
                texts = [e.text for e in await _routed_in(js)]
                return texts if "other" in texts else None

            texts = await wait_for(other_routed, timeout=20, what="the other client's message routed")
            assert "second" not in texts, f"routed before the client's earlier message: {texts}"
            await first.nak()  # the old holder stops: what it had in hand goes to the partition's holder

            async def routed() -> list[str] | None:
                texts = [e.text for e in await _routed_in(js)]
                return texts if len(texts) == 3 else None

            order = await wait_for(routed, timeout=20, what="every message of the partition routed")
    finally:
        await old.close()
    assert sorted(order) == ["first", "other", "second"]
    assert order.index("first") < order.index("second"), order


async def test_a_partition_given_up_to_a_replica_that_joins_is_freed_at_once_not_after_its_slow_message(
    nc: Any, nats_server: Any
) -> None:
    """A replica that joins (a restart, a scale-up) gets half the partitions; the replica that held them gives
    them up. Decision 023 had it finish its message in hand first, with the lease kept: while that message was
    slow (one write whose answer never came) the whole partition waited - up to ``finish_timeout``, 10 s, seen in
    the fault suite on the 3-node cluster (a 10.36 s wait after a router kill, the killed replica coming back).
    Now the lease goes at once: another client of that partition is routed by the new holder while the old
    holder's slow write has not even timed out."""
    from router.shell.base import session_id_for

    await apply_lines(nc, LINES)
    js = nc.jetstream()
    p = subjects.PARTITIONS - 1  # the first holder keeps the lowest half and gives up this one
    x, y = _chats_in_partition(p, 2)
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        # The old holder's slow write waits 20 s for its answer, not the shipped 2 s.
        async with running_router(proxy.url, shutdown_timeout=20.0, nats_request_timeout=20.0):
            await wait_for(lambda: split_evenly_over(nc, 1), timeout=30, what="the first replica holding every partition")
            # Its transcript line never reaches the server: the old holder waits for the answer (a lost packet).
            slow = proxy.drop(subjects.history(session_id_for(f"webchat:demo:{x}:1", "support")))
            await publish(nc, inbound(x, "slow", "1"))
            await wait_for(lambda: slow.fired, what="the old holder writing the slow message")
            retries = _retries()
            leases = await js.key_value(subjects.KV_ROUTER)
            first = (await leases.get(f"lease.{p}")).value

            async def moved() -> bool:
                with contextlib.suppress(Exception):
                    return (await leases.get(f"lease.{p}")).value not in (None, b"", first)
                return False

            async with running_router(nats_server.url):
                await wait_for(moved, timeout=15, what="the partition's lease taken by the replica that joined")
                await publish(nc, inbound(y, "other", "1"))  # after the old holder stopped fetching it

                async def other_routed() -> bool:
                    return "other" in [e.text for e in await _routed_in(js)]

                await wait_for(other_routed, timeout=40, what="the other client of the partition routed by the new holder")
                assert _retries() == retries, (
                    "routed only once the old holder's slow write had failed: the partition waited for it"
                )
                # The slow message itself is handed back to the new holder and routed there once.
                await wait_for(lambda: _routed_texts(js, "slow"), timeout=40, what="the slow message routed by the new holder")
    finally:
        await proxy.stop()


async def _routed_texts(js: Any, text: str) -> bool:
    return [e.text for e in await _routed_in(js)].count(text) == 1


def _retries() -> float:
    return REGISTRY.get_sample_value("openlines_router_inbound_total", {"result": "retry"}) or 0.0
