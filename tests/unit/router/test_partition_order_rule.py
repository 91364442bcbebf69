"""router.core.partition_order: a client's messages never start out of order, whoever else pulls on the partition.

The property test plays a partition consumer as JetStream runs it (delivery numbers, the acknowledgement
floor, ``max_ack_pending``, redeliveries after a nak or ``ack_wait``) with several holders at once - the old
one still pulling after its lease was lost, pull requests whose answers nobody reads, a holder that stops
with messages in hand - and checks that a holder starts a client's message only when every earlier message
of that client is acknowledged, and that one holder left alone gets through everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.partition_order import Client, PartitionOrder, Read, Scan

CLIENTS: list[Client] = [("webchat", "demo", c) for c in ("a", "b")]


def test_a_holder_that_gets_every_delivery_starts_its_clients_side_by_side_without_reading() -> None:
    order = PartitionOrder()
    order.read_done(Read(floor=0, last=0, delivery=0), 0)
    for delivery, seq in enumerate((3, 5, 9), start=1):
        order.received(seq, delivery)
    assert not order.needs_read()
    assert order.may_start(3, 1, CLIENTS[0]) and order.may_start(5, 2, CLIENTS[1]) and order.may_start(9, 3, CLIENTS[0])


def test_a_delivery_that_went_elsewhere_holds_back_what_came_after_it_until_read() -> None:
    order = PartitionOrder()
    order.read_done(Read(floor=0, last=0, delivery=0), 0)
    order.received(5, 2)  # delivery 1 (stream seq 3) went to another holder
    assert order.needs_read() and not order.may_start(5, 2, CLIENTS[0])
    order.floor_read(0)
    order.learned(3, CLIENTS[0])  # the read finds the client's earlier message
    order.read_done(Read(floor=0, last=5, delivery=2), 5)
    assert not order.needs_read()
    assert not order.may_start(5, 2, CLIENTS[0])
    assert order.may_start(5, 2, CLIENTS[1])  # had it been another client's
    order.received(3, 3)  # given here after all: its lane works it first
    assert order.may_start(5, 2, CLIENTS[0])


def test_messages_not_read_wait_for_the_floor_one_at_a_time() -> None:
    order = PartitionOrder()
    order.read_done(Read(floor=10, last=20, delivery=8), 12)  # 13-20 not read
    order.received(15, 9)
    order.received(17, 10)
    assert not order.may_start(17, 10, CLIENTS[0])
    order.floor_read(14)
    assert order.may_start(15, 9, CLIENTS[0]) and not order.may_start(17, 10, CLIENTS[1])
    order.finished(15)
    order.floor_read(16)
    assert order.may_start(17, 10, CLIENTS[1])


def test_messages_not_read_are_read_again_the_floor_may_never_pass_one_in_hand() -> None:
    # A take-over's read by sequence timed out at once: 11-20 unread. The partition's message 20 is delivered
    # here; nats-server's floor stays at 10 (its last move, other partitions' messages between) until 20 is
    # acknowledged - which it is not before it starts. Only another read lets it start.
    order = PartitionOrder()
    order.read_done(Read(floor=10, last=20, delivery=8), 10)
    order.received(20, 9)
    assert not order.may_start(20, 9, CLIENTS[0])
    assert order.unread() and order.needs_read()
    order.floor_read(10)
    assert not order.may_start(20, 9, CLIENTS[0]) and order.needs_read()
    assert order.scan_from() == 11
    order.read_done(Read(floor=10, last=20, delivery=9), 20)  # the read again: 11-19 not the partition's, 20 here
    assert not order.needs_read() and order.may_start(20, 9, CLIENTS[0])


def test_a_scan_reads_past_what_is_given_here_and_a_failed_read_leaves_the_rest_unread() -> None:
    # Delivered: 12 here (client a); the stream's 11 and 14 are the partition's too (b, a), 13 another's.
    partition = {11: CLIENTS[1], 12: CLIENTS[0], 14: CLIENTS[0]}
    order = PartitionOrder()
    order.received(12, 2)
    order.floor_read(10)  # the look at the consumer, as the shell does before a scan
    scan = Scan(order, Read(floor=10, last=14, delivery=3), at_most=5)
    asked = []
    while (seq := scan.next()) is not None:
        asked.append(seq)
        found = next((s for s in sorted(partition) if s >= seq), None)
        scan.found(found, None if found is None else partition[found])
    scan.done()
    assert asked == [11, 13]  # 12 is given here: not read
    assert order.unknown == {11: CLIENTS[1], 14: CLIENTS[0]} and not order.unread()
    assert order.waits_for(12, 2, CLIENTS[0]) is None  # b's 11 is not a's; a's 14 is after 12

    order = PartitionOrder()
    order.floor_read(10)
    scan = Scan(order, Read(floor=10, last=14, delivery=3), at_most=5)
    assert scan.next() == 11
    scan.found(11, CLIENTS[1])
    assert scan.next() == 12
    scan.failed()  # NATS away: 12-14 not read
    assert scan.next() is None and scan.reads == 2
    scan.done()
    assert order.unread() and order.scan_from() == 12 and order.unknown == {11: CLIENTS[1]}

    order = PartitionOrder()
    order.floor_read(10)
    scan = Scan(order, Read(floor=10, last=14, delivery=3), at_most=1)  # one read only
    assert scan.next() == 11
    scan.found(11, CLIENTS[1])
    assert scan.next() is None
    scan.done()
    assert order.unread() and order.scan_from() == 12


@dataclass
class _Holder:
    order: PartitionOrder = field(default_factory=PartitionOrder)
    hand: dict[int, int] = field(default_factory=dict)  # stream seq -> the delivery that brought it here first
    working: dict[Client, int] = field(default_factory=dict)
    stopped: bool = False
    read: Read | None = None  # the consumer read, the stream not yet


@dataclass
class _Consumer:
    limit: int
    stream: list[tuple[int, Client]] = field(default_factory=list)  # (partition, client) at stream seq i + 1
    last: int = 0  # the last stream seq delivered for the first time
    delivery: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # stream seq -> the number of its first delivery
    again: set[int] = field(default_factory=set)  # pending, to be delivered again (nak'd, ack_wait ran out)
    acked: set[int] = field(default_factory=set)
    floor: int = 0  # the acknowledgement floor's stream sequence, kept as nats-server keeps it
    floor_delivery: int = 0  # and its delivery number

    def ours(self) -> list[int]:
        return [i + 1 for i, (p, _) in enumerate(self.stream) if p == 0]

    def next_new(self) -> int | None:
        if len(self.pending) >= self.limit:
            return None
        return next((s for s in self.ours() if s > self.last), None)

    def deliverable(self) -> list[int]:
        new = self.next_new()
        return sorted(self.again) + ([new] if new is not None else [])

    def deliver(self, seq: int) -> int:
        self.delivery += 1
        self.last = max(self.last, seq)
        self.pending.setdefault(seq, self.delivery)  # a redelivery keeps the number of the first
        self.again.discard(seq)
        return self.delivery

    def ack(self, seq: int) -> None:
        if seq not in self.pending:
            return
        first = self.pending.pop(seq)
        self.again.discard(seq)
        self.acked.add(seq)
        # nats-server's moveAckFloor: the floor moves only when the oldest delivery is acked, up to just before
        # the next pending one; with nothing pending it jumps to the last delivery. So while a message is pending
        # after others of the stream (other partitions'), the floor may stay well below it - until it is acked.
        if not self.pending:
            self.floor, self.floor_delivery = self.last, self.delivery
        elif first == self.floor_delivery + 1:
            self.floor, self.floor_delivery = seq, first
            nxt = min((s for s in self.pending if s > seq), default=None)
            if nxt is not None:
                self.floor, self.floor_delivery = nxt - 1, self.pending[nxt] - 1

    def look(self) -> Read:
        return Read(floor=self.floor, last=self.last, delivery=self.delivery)


def _read_stream(c: _Consumer, h: _Holder, at_most: int) -> None:
    """What the shell does after a look at the consumer: the partition's messages read by sequence."""
    assert h.read is not None
    read, h.read = h.read, None
    if not h.order.needs_read():
        return
    scan = Scan(h.order, read, at_most)
    while (seq := scan.next()) is not None:
        found = next((s for s in c.ours() if s >= seq), None)  # next_by_subj
        scan.found(found, None if found is None else c.stream[found - 1][1])
    scan.done()


def _take_over(c: _Consumer) -> _Holder:
    """A holder that just took the partition has looked at the consumer; it pulls once it has read the stream."""
    h = _Holder()
    h.read = c.look()
    h.order.floor_read(h.read.floor)
    return h


def _first_read(c: _Consumer, h: _Holder, at_most: int) -> None:
    """The stream read after a take-over, then what the previous holder had in hand handed back (nak'd)."""
    assert h.read is not None
    last = h.read.last
    _read_stream(c, h, at_most)
    unread = range(max(h.order.known_to, h.order.floor) + 1, last + 1)
    for seq in [*h.order.unknown, *unread]:
        if seq in c.pending:
            c.again.add(seq)


def _lane_head(c: _Consumer, h: _Holder, client: Client) -> int | None:
    mine = [s for s in h.hand if c.stream[s - 1][1] == client]
    return min(mine) if mine and not h.stopped and client not in h.working else None


def _may_start(c: _Consumer, h: _Holder, client: Client) -> bool:
    seq = _lane_head(c, h, client)
    return seq is not None and h.order.may_start(seq, h.hand[seq], client)


def _start(c: _Consumer, h: _Holder, client: Client) -> None:
    seq = _lane_head(c, h, client)
    assert seq is not None
    earlier = [s for s in c.ours() if s < seq and c.stream[s - 1][1] == client and s not in c.acked]
    assert not earlier, f"{client[2]}'s message {seq} started while {earlier} not acknowledged"
    h.working[client] = seq


def _finish(c: _Consumer, h: _Holder, client: Client) -> None:
    seq = h.working.pop(client)
    c.ack(seq)
    h.order.finished(seq)
    h.hand.pop(seq, None)


Action = tuple[str, int, int]  # what, holder (index), stream seq or client (index) or partition


def _actions(c: _Consumer, holders: list[_Holder]) -> list[Action]:
    """Everything that can happen next (a start only where the rule allows it: that is what is checked)."""
    acts: list[Action] = []
    if len(c.stream) < 14:
        acts += [("publish", p, k) for p in (0, 1) for k in range(len(CLIENTS))]
    for seq in c.deliverable():
        acts.append(("lost", 0, seq))  # to a holder that stopped, or a pull request whose answer nobody reads
        acts += [("deliver", i, seq) for i, h in enumerate(holders) if not h.stopped and h.order.synced]
    acts += [("time_out", 0, seq) for seq in sorted(c.pending.keys() - c.again)]
    for i, h in enumerate(holders):
        acts += [("start", i, k) for k, client in enumerate(CLIENTS) if _may_start(c, h, client)]
        acts += [("finish", i, CLIENTS.index(client)) for client in h.working]
        if not h.stopped:
            acts += [("look", i, 0)] if h.read is None else [("read", i, 0)]
            acts.append(("stop", i, 0))
    if len(holders) < 3:
        acts.append(("take_over", 0, 0))
    return acts


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([2, 3, 8]), st.sampled_from([0, 1, 1000]))
def test_a_clients_message_never_starts_before_its_earlier_ones_are_acknowledged(
    data: st.DataObject, limit: int, at_most: int
) -> None:
    c = _Consumer(limit=limit)
    holders = [_take_over(c)]
    for _ in range(data.draw(st.integers(10, 80))):
        acts = _actions(c, holders)
        if not acts:
            break
        what, i, n = data.draw(st.sampled_from(acts))
        h = holders[i] if i < len(holders) else holders[0]
        if what == "publish":
            c.stream.append((i, CLIENTS[n]))
        elif what == "lost":
            c.deliver(n)
        elif what == "deliver":
            h.order.received(n, c.deliver(n))
            h.hand.setdefault(n, c.delivery)
        elif what == "start":
            _start(c, h, CLIENTS[n])
        elif what == "finish":
            _finish(c, h, CLIENTS[n])
        elif what == "time_out":
            c.again.add(n)
        elif what == "look":
            h.read = c.look()
            h.order.floor_read(h.read.floor)
        elif what == "read" and not h.order.synced:
            _first_read(c, h, at_most)
        elif what == "read":
            _read_stream(c, h, at_most)
        elif what == "stop":
            h.stopped = True  # what it started it finishes; what waits in its lanes stays pending
            h.hand = {s: d for s, d in h.hand.items() if s in h.working.values()}
        elif what == "take_over":
            holders.append(_take_over(c))

    # Left alone: the others stop (finishing what they started), what they had comes again after ack_wait, and
    # one holder that takes over gets through every message of the partition.
    for h in holders:
        for client in list(h.working):
            _finish(c, h, client)
        h.stopped = True
    c.again |= c.pending.keys()
    last = _take_over(c)
    _first_read(c, last, at_most)  # it may fail (0: NATS slow or away), as at any take-over
    at_most = max(at_most, 1)  # then NATS is back: a read gets somewhere
    for _ in range(10 * len(c.stream) + 10):
        if set(c.ours()) <= c.acked:
            break
        while c.deliverable():
            seq = c.deliverable()[0]
            delivery = c.deliver(seq)
            last.order.received(seq, delivery)
            last.hand.setdefault(seq, delivery)
        last.read = c.look()
        last.order.floor_read(last.read.floor)
        _read_stream(c, last, at_most)
        for client in CLIENTS:
            if _may_start(c, last, client):
                _start(c, last, client)
                _finish(c, last, client)
    assert set(c.ours()) <= c.acked, f"stuck: {sorted(set(c.ours()) - c.acked)} never acknowledged"
