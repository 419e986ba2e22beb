"""How much work an optimization run is, and how much of it is done: what its progress bar counts.

Work is counted in noisy samples, one input's forward pass each, so that every part of a run
advances the bar at about the pace it takes: an evaluation of a sigma (CERTIFY on the evaluation
inputs) is ``inputs x (eval_n0 + eval_n)``, a step of Algorithm 1 ``batch_size x n0 x``
:data:`BACKWARD_COST`, a fine-tuning step of co-optimization ``finetune_batch_size x``
:data:`BACKWARD_COST`. A run announces its whole work first (:class:`Started`, from
:func:`work_plan`), the isotropic baseline included, then reports what is done
(:class:`Progress`) as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

BACKWARD_COST = 3  # a noisy sample that is also back-propagated costs about three forward passes


@dataclass(frozen=True)
class Started:
    """A run starts: its whole work, how much of it an earlier run did, and where that one stopped."""

    total: int
    done: int
    resumed: str  # "" for a new run, else e.g. "after sub-epoch 2 of init 1 (σ = 0.25)"


@dataclass(frozen=True)
class Progress:
    """The work done so far, and what is being done ("": as before)."""

    done: int
    what: str = ""


class WorkCounter:
    """The work a run has done so far, reported to its events as :class:`Progress`."""

    def __init__(self, emit: Callable[[Any], None]):
        self.done = 0
        self.emit = emit

    def start(self, plan: Started) -> None:
        self.done = plan.done
        self.emit(plan)

    def reach(self, done: int, what: str = "") -> None:
        self.done = done
        self.emit(Progress(done, what))

    def add(self, work: int, what: str = "") -> None:
        self.reach(self.done + work, what)


def work_plan(
    evaluation: int,
    constants: list[float],
    rounds: int,
    round_work: int,
    position: list[int],
    unit: str,
    baseline: tuple[int, int] = (0, 0),
) -> Started:
    """The work of a run that trains sigma for ``rounds`` rounds of ``round_work`` from each of the ``constants``
    and evaluates it (``evaluation`` each) after every round, after ``baseline = (evaluations, done)`` isotropic
    evaluations; an earlier run stopped at ``position = [init index, rounds of it finished]``, a ``unit`` each."""
    finished = position[0] * rounds + position[1]
    total = baseline[0] * evaluation + len(constants) * rounds * (round_work + evaluation)
    done = baseline[1] * evaluation + finished * (round_work + evaluation)
    if finished:
        init, last = divmod(finished - 1, rounds)
        resumed = f"after {unit} {last + 1} of init {init + 1} (σ = {constants[init]:g})"
    else:
        resumed = f"after {baseline[1]} of {baseline[0]} isotropic evaluations" if baseline[1] else ""
    return Started(total, done, resumed)
