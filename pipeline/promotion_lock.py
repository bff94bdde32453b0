"""The promotion lock of a registered model: one holder at a time, also when a holder dies or stalls.

An MLflow store (sqlite, or a tracking server on PostgreSQL) offers one atomic operation: creating a
registered model; a second creator of the same name is refused. The lock is a numbered sequence of
such models, tickets ``<name>.promotion-lock.<n>``, and holding it means having created the newest
ticket:

- **Taking it.** When the newest ticket is released, or its lease ran out, a waiter creates ticket
  n + 1. Only one waiter can create it: two waiters that both saw ticket n end never both hold the
  lock, which deleting a stale lock and creating it again could not promise.
- **Lease.** A holder renews its ticket's lease (tag ``expires``, wall-clock seconds) from a thread
  every third of ``lease`` seconds, so a run that holds the lock for long keeps it. A killed holder
  stops renewing, and its lock is taken over ``lease`` (plus the allowed clock skew) later.
- **Fencing.** The ticket number is a fencing token: a holder that stalled past its lease (a frozen
  VM, a lost network) finds a newer ticket when it renews or calls :meth:`HeldLock.check`, and the
  registry stops before writing (:class:`LockLostError`).
- **Release** marks the ticket released; older tickets are deleted. The newest stays: deleting it
  would let a stalled holder of an older number find its own ticket newest again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import UnavailableError

log = logging.getLogger(__name__)

LOCK_INFIX = ".promotion-lock."
"""Ticket ``n`` of model ``NAME`` is the registered model ``NAME.promotion-lock.<n, 8 digits>``."""
LEASE_S = 30.0
"""How long a ticket stays held without renewal; the holder renews every third of it."""
CLOCK_SKEW_S = 5.0
"""Leases are compared on the waiter's clock: this much disagreement between machines is allowed."""
LOCK_WAIT_S = 600.0
"""How long a run waits for the lock before giving up (exit 3)."""
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow error codes that mean the thing asked for is not there (or the request names it wrongly)."""


class LockLostError(UnavailableError):
    """This run's ticket is no longer the newest: another run took the lock after our lease ran out."""


class LockUnavailableError(UnavailableError):
    """The tracking server failed while this run was taking the lock."""


class LockTimeoutError(UnavailableError):
    """Another run held the lock for longer than this run would wait."""


@dataclass(frozen=True)
class Ticket:
    """One ticket as a waiter reads it."""

    number: int
    owner: str
    expires: float
    released: bool

    def free(self, now: float) -> bool:
        """Whether a waiter may take the lock over this ticket."""
        return self.released or now > self.expires + CLOCK_SKEW_S


def is_ticket(model_name: str) -> bool:
    """Whether a registered model's name is a lock ticket (not a model to list to users)."""
    head, infix, number = model_name.rpartition(LOCK_INFIX)
    return bool(head and infix and number.isdigit())


def ticket_name(name: str, number: int) -> str:
    return f"{name}{LOCK_INFIX}{number:08d}"


def tickets(client: Any, name: str) -> list[Ticket]:
    """The lock's tickets, oldest first. A ticket whose tags are not written yet (the server creates
    the model, then its tags) counts as held for a lease from its creation."""
    prefix = f"{name}{LOCK_INFIX}"
    found, page = [], None
    while True:
        result = client.search_registered_models(
            filter_string=f"name LIKE '{prefix}%'", max_results=100, page_token=page
        )
        for model in result:
            number = model.name[len(prefix) :]
            if not model.name.startswith(prefix) or not number.isdigit():
                continue
            tags = model.tags or {}
            created = (model.creation_timestamp or 0) / 1000.0
            found.append(
                Ticket(
                    number=int(number),
                    owner=tags.get("owner", "(being created)"),
                    expires=float(tags.get("expires", created + LEASE_S)),
                    released=tags.get("state") == "released",
                )
            )
        page = result.token
        if not page:
            return sorted(found, key=lambda t: t.number)


class HeldLock:
    """The lock as its holder has it: a ticket number, a lease renewed from a thread, and a check."""

    def __init__(self, client: Any, name: str, number: int, owner: str, lease: float) -> None:
        self.client, self.name, self.number, self.owner, self.lease = client, name, number, owner, lease
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_released, daemon=True, name="lock-lease")

    @property
    def ticket(self) -> str:
        return ticket_name(self.name, self.number)

    def check(self) -> None:
        """Raise :class:`LockLostError` unless this ticket is still the newest (call it right before a
        write the lock protects)."""
        if self.lost is None:
            newest = tickets(self.client, self.name)
            if not newest or newest[-1].number != self.number:
                by = newest[-1].owner if newest else "nobody"
                self.lost = f"ticket {self.number} is no longer the newest (held now by {by})"
        if self.lost is not None:
            raise LockLostError(
                f"registered model {self.name!r}: this run lost the promotion lock ({self.lost}); it wrote "
                "nothing: run it again"
            )

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.lease / 3.0):
            try:
                self.check()
                expires = f"{time.time() + self.lease:.3f}"
                self.client.set_registered_model_tag(self.ticket, "expires", expires)
            except LockLostError:
                log.error("promotion lock %s: %s", self.ticket, self.lost)
                return
            except Exception as exc:  # the server is down for a moment: the lease covers it
                log.warning("promotion lock %s: could not renew the lease: %s", self.ticket, exc)

    def _release(self) -> None:
        self._stop.set()
        self._renewer.join()
        if self.lost is not None:
            return
        self.client.set_registered_model_tag(self.ticket, "state", "released")
        for old in tickets(self.client, self.name):
            if old.number < self.number:
                _delete(self.client, ticket_name(self.name, old.number))


@contextmanager
def promotion_lock(
    client: Any, name: str, lease: float = LEASE_S, wait: float = LOCK_WAIT_S, poll: float = 0.2
) -> Iterator[HeldLock]:
    """Hold the promotion lock of model ``name`` within the block (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    owner = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
    try:
        number = _take(client, name, owner, lease, wait, poll)
    except MlflowException as exc:
        said = str(exc.message).splitlines()[0][:300] if str(exc.message) else type(exc).__name__
        raise LockUnavailableError(
            f"registered model {name!r}: taking the promotion lock failed ({said}); check that the tracking "
            "server is up"
        ) from exc
    held = HeldLock(client, name, number, owner, lease)
    held._renewer.start()
    try:
        yield held
    finally:
        try:
            held._release()
        except MlflowException as exc:  # never hide the block's own error; the lease runs out
            log.warning("could not release promotion lock %s: %s", held.ticket, exc)


def _take(client: Any, name: str, owner: str, lease: float, wait: float, poll: float) -> int:
    """Create the next ticket once the newest is free; its number."""
    from mlflow.exceptions import MlflowException

    started = time.monotonic()
    while True:
        existing = tickets(client, name)
        newest = existing[-1] if existing else None
        now = time.time()
        if newest is None or newest.free(now):
            if newest is not None and not newest.released:
                log.warning("promotion lock of %s: the lease of %s ran out; taking over", name, newest.owner)
            number = 1 if newest is None else newest.number + 1
            tags = {"owner": owner, "expires": f"{now + lease:.3f}", "state": "held"}
            try:
                client.create_registered_model(ticket_name(name, number), tags=tags, description=DESCRIPTION)
                return number
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                continue  # another waiter took ticket `number` first
        if time.monotonic() - started > wait:
            raise LockTimeoutError(
                f"registered model {name!r}: another run ({newest.owner}) has held the promotion lock for "
                f"over {wait:.0f} s and keeps its lease; run again later"
            )
        time.sleep(poll)


DESCRIPTION = (
    "Promotion lock: a pipeline run creates the newest ticket to write a model version and its aliases, "
    "renews its lease while it writes and marks it released when done. Do not delete the newest ticket."
)


def _delete(client: Any, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(model)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise
