"""Which message of a partition a holder may start, so that one client's messages are never worked at once or
out of order - whoever else is handed messages of the partition meanwhile (decisions 029 and 033).

A partition consumer allows ``in_hand`` unacknowledged messages. For a moment two replicas may both pull on it
(a lease renewed late, a probe that took the partition from a replica that came back, a stray pull request of a
replica that gave it up); the server then hands messages to either. What settles who had what is the consumer's
delivery sequence: every delivery, first or again, takes the next number, and a holder is given its own in
that order. So a holder that has had every delivery up to number *n* knows that nobody else was handed
anything meanwhile; a number it never got went to someone else.

The rule: a message *s* of client *c* starts only when

1. every delivery up to the one that brought *s* is accounted for - it came here, or was counted when the
   consumer and the stream were last read (:meth:`PartitionOrder.read_done`);
2. no message of *c* before *s* that another holder may have is unacknowledged: those are the partition's
   messages between the consumer's acknowledgement floor and its last delivery at the last read that were not
   given here, read from the stream with their client (``unknown``), until the floor passes them or they are
   given here (a message given here is worked in its client's lane, in stream order, by the shell);
3. none of them is unread (a read by sequence that failed, or more than a read may take): then *s* waits until
   the floor is past all before it, or a later read gets to them. The shell reads again while anything is
   unread - the floor alone is not enough: nats-server keeps it below a pending message that follows other
   partitions' messages until that message is acknowledged (:meth:`PartitionOrder.unread`).

On the common path - one holder - every delivery comes here in order, nothing is read and (1)-(3) are a few
comparisons. A delivery missing (a number skipped) means another holder: the consumer and the new part of the
stream are read again before anything delivered after the skip starts.

Pure: the shell (``router.order`` and ``router.inbound``) says what was delivered and finished here and what it read; no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

Client = tuple[str, str, str]  # channel, account, chat id


@dataclass(frozen=True, slots=True)
class Read:
    """One look at the partition consumer."""

    floor: int  # every stream sequence up to this one is acknowledged (or not the partition's)
    last: int  # the last stream sequence it delivered for the first time
    delivery: int  # the number of its last delivery (consumer sequence), first or again


class PartitionOrder:
    def __init__(self, remember: int = 4096) -> None:
        self.synced = False  # the consumer was read once: before that, nothing starts
        self.counted = 0  # every delivery up to this number came here or was counted by a read
        self.ahead: set[int] = set()  # deliveries here after a number not (yet) counted
        self.floor = 0
        self.known_to = 0  # every partition message up to this stream sequence is here, done here, read, or acked
        self.unread_to = 0  # (known_to, unread_to]: not read at the last read (too many)
        self.unknown: dict[int, Client | None] = {}  # stream seq -> client: above the floor, not given here
        self._unknown_of: dict[Client | None, set[int]] = {}
        self.mine: set[int] = set()  # given here, not finished
        self._done: set[int] = set()  # finished here, above the floor when finished (the latest ``remember``)
        self._done_order: deque[int] = deque()
        self._remember = remember

    # What happened here.

    def received(self, seq: int, delivery: int) -> bool:
        """Stream sequence ``seq`` was delivered here as delivery number ``delivery``; whether a message that
        waits may now go on (this one was unknown, or it was the number missing before others that came)."""
        moved = False
        if delivery == self.counted + 1:
            self.counted = delivery
            moved = self._advance()
        elif delivery > self.counted:
            self.ahead.add(delivery)
        self.mine.add(seq)
        return self._forget(seq) or moved

    def finished(self, seq: int) -> None:
        """Acknowledged (or terminated) here."""
        self.mine.discard(seq)
        if seq > self.floor and seq not in self._done:
            self._done.add(seq)
            self._done_order.append(seq)
            while len(self._done_order) > self._remember:
                self._done.discard(self._done_order.popleft())

    # What a read said.

    def floor_read(self, floor: int) -> bool:
        """The consumer's acknowledgement floor; whether it moved."""
        if floor <= self.floor:
            return False
        self.floor = floor
        for seq in [s for s in self.unknown if s <= floor]:
            self._forget(seq)
        while self._done_order and self._done_order[0] <= floor:
            self._done.discard(self._done_order.popleft())
        return True

    def needs_read(self) -> bool:
        """Whether the consumer and the stream must be read: never yet, a delivery went elsewhere, or the last read
        left messages unread (:meth:`unread`)."""
        return not self.synced or bool(self.ahead) or self.unread()

    def unread(self) -> bool:
        """Whether partition messages the last read should have learned were not read (a read by sequence that
        failed, or more than one read takes). Waiting for the floor alone is not enough then: nats-server moves
        the floor only when its oldest delivery is acknowledged, and with nothing pending it jumps to the last
        delivery - so while a message in this holder's hand is pending after other partitions' messages, the
        floor may stay below it until it is acknowledged, which it is not before it starts. Read again."""
        return max(self.known_to, self.floor) < self.unread_to

    def scan_from(self) -> int:
        """The first stream sequence the next read of the stream starts at."""
        return max(self.known_to, self.floor) + 1

    def is_ours(self, seq: int) -> bool:
        """Given here (in hand or finished): its client is known, it need not be read."""
        return seq in self.mine or seq in self._done

    def learned(self, seq: int, client: Client | None) -> None:
        """A partition message read from the stream (``client`` None: not a client message, nobody waits for it)."""
        if seq <= self.floor or self.is_ours(seq) or seq in self.unknown:
            return
        self.unknown[seq] = client
        self._unknown_of.setdefault(client, set()).add(seq)

    def read_done(self, read: Read, read_to: int) -> None:
        """The read ``read`` of the consumer is complete: every partition message above the floor up to
        ``read_to`` (at most ``read.last``) was read with :meth:`learned`, the rest up to ``read.last`` not."""
        self.floor_read(read.floor)
        self.known_to = max(self.known_to, read_to)
        self.unread_to = max(self.unread_to, read.last)
        # Deliveries made after the consumer was read may have come here before its answer: both count.
        # (A consumer deleted and made again numbers its deliveries from 1; those at or below what was counted
        # go uncounted - it delivers the partition again from its start then, handled again by message id.)
        self.ahead = {d for d in self.ahead if d > read.delivery}
        self.counted = max(self.counted, read.delivery)
        self._advance()
        self.synced = True

    # The rule.

    def may_start(self, seq: int, delivery: int, client: Client) -> bool:
        """Whether the message at ``seq``, delivered here as ``delivery``, of ``client`` may start now (the shell
        starts only the first message of a client's lane)."""
        return self.waits_for(seq, delivery, client) is None

    def waits_for(self, seq: int, delivery: int, client: Client) -> Literal["look", "floor"] | None:
        """What the message waits for: a look at the consumer and the stream (a delivery before it is not
        accounted for), the floor to pass (or an earlier message of its client to be given here), or nothing."""
        if not self.synced or delivery > self.counted:
            return "look"
        if max(self.known_to, self.floor) < min(seq - 1, self.unread_to):
            return "floor"
        earlier = self._unknown_of.get(client)
        return "floor" if earlier and min(earlier) < seq else None

    def _advance(self) -> bool:
        moved = False
        while self.counted + 1 in self.ahead:
            self.counted += 1
            self.ahead.discard(self.counted)
            moved = True
        return moved

    def _forget(self, seq: int) -> bool:
        if seq not in self.unknown:
            return False
        client = self.unknown.pop(seq)
        same = self._unknown_of[client]
        same.discard(seq)
        if not same:
            del self._unknown_of[client]
        return True


class Scan:
    """One read of a partition's messages by sequence after a look at the consumer, without the I/O: the shell
    (and the rule's property test, against its model of nats-server) asks :meth:`next` where to read from,
    reads the first partition message at or after it and says what it found with :meth:`found` (or
    :meth:`failed`), until :meth:`next` answers None; then :meth:`done`.

    Reads at most ``at_most`` messages; what it did not read is left for the next read (:meth:`PartitionOrder.unread`).
    """

    def __init__(self, order: PartitionOrder, read: Read, at_most: int) -> None:
        self.order = order
        self.read = read
        self.at_most = at_most
        self.seq = order.scan_from()
        self.read_to = read.last  # every partition message up to here is read, unless a read fails or there are too many
        self.reads = 0

    def next(self) -> int | None:
        """The stream sequence to read the partition's next message from, or None: the scan is over."""
        while self.seq <= self.read.last and self.order.is_ours(self.seq):
            self.seq += 1  # given here: its client is known
        if self.seq > self.read.last:
            return None
        if self.reads >= self.at_most:
            self.read_to = self.seq - 1
            self.seq = self.read.last + 1
            return None
        self.reads += 1
        return self.seq

    def found(self, seq: int | None, client: Client | None) -> None:
        """The partition's first message at or after :meth:`next`'s answer: at ``seq`` (None: none up to the end)."""
        if seq is None or seq <= 0 or seq > self.read.last:
            self.seq = self.read.last + 1  # nothing more of the partition up to the look's last delivery
            return
        self.order.learned(seq, client)
        self.seq = seq + 1

    def failed(self) -> None:
        """The read failed (NATS slow or away): the rest counts as not read."""
        self.read_to = self.seq - 1
        self.seq = self.read.last + 1

    def done(self) -> None:
        self.order.read_done(self.read, self.read_to)
