"""A client message that comes while the inbound stream has no leader (the node leading it was killed -9
and the cluster is electing another) is held by its gateway and stored once the new leader is there:
the sender gets 200, not 503, and JetStream keeps one copy (decision 028)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from peers.telegram_api import message_update
from prometheus_client import REGISTRY
from support import inbound
from support.chaos import elections_after
from support.servers import NatsCluster
from support.telegram import SUPPORT, fake_telegram, inbound_of, running_gateway
from support.timing import scaled, wait_for

from openlines import bus, subjects
from openlines.envelopes import HistoryEntry, utcnow
from router.effects import Effects
from router.timers import Timer, schedule


async def test_a_webhook_during_an_election_is_held_and_stored_once_after_it(tmp_path: Path) -> None:
    async with _cluster(tmp_path) as (cluster, nc):
        leader = (await nc.jetstream().stream_info(subjects.STREAM_IN)).cluster.leader
        doomed = next(n for n in cluster.nodes if f"-n {leader} " in " ".join(n.args) + " ")
        others = ",".join(n.url for n in cluster.nodes if n is not doomed)  # the gateway stays connected
        # Longer than any election (4-9 s in nats-server's raft): the gateway holds the webhook meanwhile.
        hold = scaled(30)
        async with fake_telegram() as peer, running_gateway(others, peer, replicas=3, publish_timeout=hold):
            update = message_update(5150, 777, "written during the election")
            killed_at = time.time()
            doomed.stop(kill=True)
            status, body = await peer.deliver(SUPPORT["token"], update)
            answered_at = time.time()
            assert (status, body) == (200, {"ok": True, "duplicate": False}), (status, body)
            elected_at = elections_after(cluster.nodes, killed_at)
            # It really came while there was no leader: it was answered only after the election.
            assert elected_at > killed_at and answered_at >= elected_at - 0.5, (killed_at, elected_at, answered_at)
            doomed.start()
            assert await peer.deliver(SUPPORT["token"], update) == (200, {"ok": True, "duplicate": True})
            stored = await wait_for(lambda: _inbound(nc), timeout=30, what="OL_IN readable with the cluster whole")
            assert [e.text for e in stored] == ["written during the election"]


async def test_the_same_client_message_stored_at_once_from_several_tries_is_stored_once_and_each_try_succeeds(
    tmp_path: Path,
) -> None:
    """On a cluster, JetStream answers a publish whose Nats-Msg-Id another publish is being stored under at
    that moment with "duplicate message id is in process" (10158), not "duplicate": a gateway's retry that
    overlaps its first try, or two gateway replicas given the same webhook. Each try must end as stored or
    duplicate - it used to end in BusUnavailable, a 503 to the sender."""
    async with _cluster(tmp_path) as (_, nc):
        js = nc.jetstream()
        for i in range(20):
            env = inbound(f"same{i}", "written once", "m1")
            acks = await asyncio.gather(*(bus.publish_inbound(nc, js, env, timeout=scaled(10)) for _ in range(4)))
            assert sum(not a.duplicate for a in acks) <= 1, acks
            assert len({a.seq for a in acks}) == 1, acks  # every try names the one stored copy
        info = await js.stream_info(subjects.STREAM_IN)
        assert info.state.messages == 20


async def test_one_router_step_published_from_several_tries_at_once_is_stored_once_and_each_try_succeeds(
    tmp_path: Path,
) -> None:
    """An operator command asked again while its first try is still at work (the desk retries a command the
    router did not answer in time), or two router replicas redoing one step, publish the same transcript line,
    event and timer at the same moment. On a cluster JetStream answers the later ones with 10158; the router's
    publishes (``Effects`` alone and in a ``together`` block, ``timers.schedule``) used to raise it, and the
    command answered "unavailable" - a 503 to the operator."""
    async with _cluster(tmp_path) as (_, nc):
        js = nc.jetstream()
        fx = Effects(js, nc)
        rounds = 10

        due = time.time() + 3600  # a timer's id carries its due time: every try sets the same timer

        async def close_trail(i: int) -> None:  # the tail of a close: the transcript line, its event, a timer
            await fx.history(HistoryEntry(id=f"note:closed:s{i}", session_id=f"s{i}", direction="system", text="x", at=utcnow()))
            await fx.event(f"closed:s{i}", "session_closed")
            await schedule(js, Timer(kind="settle", target=f"s{i}", due=due, token="t"))

        async def offer_trail(i: int) -> None:  # an offer's trail, written as one block
            async with fx.together():
                await fx.event(f"offered:s{i}:1", "session_offered")
                await fx.history(HistoryEntry(id=f"note:offered:s{i}:1", session_id=f"s{i}", direction="system", at=utcnow()))

        for i in range(rounds):
            await asyncio.gather(*(close_trail(i) for _ in range(4)))
            await asyncio.gather(*(offer_trail(i) for _ in range(4)))
        stored = {
            name: (await js.stream_info(name)).state.messages
            for name in (subjects.STREAM_HIST, subjects.STREAM_EVT, subjects.STREAM_TIMER)
        }
        assert stored == {subjects.STREAM_HIST: 2 * rounds, subjects.STREAM_EVT: 2 * rounds, subjects.STREAM_TIMER: rounds}, (
            stored
        )


async def test_a_request_the_election_left_unanswered_ends_soon_after_the_new_leader(tmp_path: Path) -> None:
    """A JetStream request about a stream with no leader (its leader's node killed -9) is never answered: the
    router's look at its waiting queues (stream info) sent during the election waited out its whole timeout
    even when the new leader came just after (decision 028's lag: one message 2.29 s after the new leaders).
    A service follows the elections (decision 041): a request waiting when the stream's new leader is elected
    and still unanswered ``ELECTION_GRACE`` later ends as timed out, and is asked again at once."""
    async with _cluster(tmp_path) as (cluster, nc):
        leader = (await nc.jetstream().stream_info(subjects.STREAM_HIST)).cluster.leader
        doomed = next(n for n in cluster.nodes if f"-n {leader} " in " ".join(n.args) + " ")
        others = ",".join(n.url for n in cluster.nodes if n is not doomed)
        svc = await bus.connect(others, "test-elections", first_attempts=5)
        try:
            await bus.follow_elections(svc, "test-elections")
            patient = scaled(30.0)  # longer than any election: only the election can end a request early
            js = svc.jetstream(timeout=patient)
            failed_before = _failed_after_elections()
            elected = asyncio.Event()  # a stream's new leader was announced

            async def on_elected(_: Any) -> None:
                elected.set()

            await svc.subscribe(bus.LEADER_ELECTED, cb=on_elected)
            await bus.flush_all(svc)
            killed_at = time.time()
            doomed.stop(kill=True)
            tries: list[tuple[str, float, float]] = []  # (how it ended, sent, ended)
            while time.time() < killed_at + patient:
                sent = time.time()
                try:
                    info = await js.stream_info(subjects.STREAM_HIST)
                except NatsTimeoutError:
                    tries.append(("timed out", sent, time.time()))
                    continue
                except Exception as exc:  # refused at once: asked again when the next new leader is announced
                    tries.append((type(exc).__name__, sent, time.time()))
                    elected.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(elected.wait(), killed_at + patient - time.time())
                    continue
                tries.append((f"answered, leader {info.cluster.leader}", sent, time.time()))
                if info.cluster.leader and info.cluster.leader != leader:
                    break
            elected_at = elections_after(cluster.nodes, killed_at)
            assert elected_at > killed_at, "no stream lost its leader"
            shown = [(how, round(sent - elected_at, 2), round(ended - elected_at, 2)) for how, sent, ended in tries]
            assert tries[-1][0].startswith("answered"), shown
            waiting = [t for t in tries if t[1] < elected_at < t[2]]  # in flight when the new leader came
            assert waiting, ("no request was waiting when the new leader came", shown)
            for _, _, ended in waiting:
                assert ended < elected_at + bus.ELECTION_GRACE + scaled(1.0), shown
            assert tries[-1][2] < elected_at + bus.ELECTION_GRACE + scaled(1.5), shown
            assert _failed_after_elections() > failed_before
        finally:
            await svc.close()
            doomed.start()


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, Any]]:
    """A 3-node cluster with the streams made (R3) and a connection to it; at the end, nothing NATS refused."""
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    nc = await bus.connect(cluster.url, "test", first_attempts=5)
    try:

        async def bootstrapped() -> bool:
            try:
                await bus.bootstrap(nc.jetstream(), replicas=3)
            except Exception:  # the cluster still electing its first leaders
                return False
            return True

        await wait_for(bootstrapped, timeout=60, interval=0.5, what="JetStream ready for the streams")
        yield cluster, nc
    finally:
        await nc.close()
        cluster.stop()
        refused = cluster.violations()
        assert not refused, "NATS refused what a service did:\n" + "\n".join(refused)


def _failed_after_elections() -> float:
    return REGISTRY.get_sample_value("openlines_nats_requests_failed_after_election_total") or 0.0


async def _inbound(nc: Any) -> list[Any] | None:
    try:
        return await inbound_of(nc)
    except Exception:  # a node just back: the stream's leader may be moving (wait_for asks again)
        return None
