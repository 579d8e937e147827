"""One worker process of a serverless run: ``relayfl node``.

A :class:`Node` trains one worker (a :class:`Trainer`: the simulator's
:class:`~relayfl.worker.LocalWorker` on a :class:`~relayfl.task.Task`, or a Flower
``NumPyClient``) and, every ``local_steps`` steps, exchanges messages with its tree (or
gossip) neighbours through a :class:`~relayfl.transport.base.Transport`. The mixing is
the one-node view of the simulator's math: :class:`relayfl.relay.RelayNode` for
``relaysgd`` / ``relaysgd-grad`` and :class:`GossipNode` for ``dpsgd``, so a deployed
run reproduces :func:`relayfl.simulate` on the same seed (``tests/test_node.py``).

The protocol is step-synchronous and robust to timing:

* **Rendezvous.** Before step 0 every node waits (``startup_timeout``) until each of
  its neighbours has answered a status call.
* **Steps.** At step ``t`` a node sends its messages, then waits for one message per
  neighbour and tree. Messages for ``t + 1`` that arrive early are buffered; messages
  further ahead, and messages for a step already used (replays, late arrivals), are
  rejected. A message that misses ``step_timeout`` counts as dropped (docs/algorithm.md
  section 1.4): with ``fill="latest"`` the node fills the missing mass with its own
  latest model (Table 5, section 6.4), so drops do not pull models back to ``x0``.
* **Liveness apart from data.** A heartbeat thread exchanges status calls (step, phase,
  whom the node waits on) every ``heartbeat`` seconds. A neighbour silent for
  ``dead_after`` seconds is declared dead once; its edge counts as dropped from then on,
  and the node reports how the tree splits. A neighbour that reports it is blocked on
  *another* peer extends the wait instead of being dropped, so a dead node costs its
  neighbours one ``dead_after``, not a cascade of timeouts.
* **Resume and rejoin.** A node restarted with ``resume=True`` loads its checkpoint,
  learns the current step from its neighbours, skips ahead to the slowest one's step,
  and its neighbours restore the edge (and resend what it missed). When parts of a
  split tree meet again at different steps, the part behind catches up step by step
  (dropping the edge to the part ahead) while the part ahead holds: nobody loses
  training steps. Every status carries the step a node (re)started at, so nobody waits
  for a step that a restarted node never makes.
* **Checks.** Every received message is checked (run id, sender, tree, dtype, shape,
  count, step window, NaN/Inf) and a rejected one is logged in one line and never
  touches the model.

The package splits along these seams: :mod:`~relayfl.node.options` (``NodeConfig``,
run id), :mod:`~relayfl.node.trainer` (loading the client), :mod:`~relayfl.node.checks`
(message checks), :mod:`~relayfl.node.steps` (the step protocol),
:mod:`~relayfl.node.liveness` (heartbeats, deaths), :mod:`~relayfl.node.checkpoint`,
:mod:`~relayfl.node.events` (``log.jsonl``), :mod:`~relayfl.node.core` (:class:`Node`)
and :mod:`~relayfl.node.shell` (the ``relayfl node`` process).
"""

from __future__ import annotations

from relayfl.node.core import Node
from relayfl.node.liveness import split_parts
from relayfl.node.mixing import GossipNode
from relayfl.node.options import NODE_ALGORITHMS, NodeConfig, NodeStopped, run_id
from relayfl.node.trainer import FlowerTrainer, Trainer, load_trainer

__all__ = [
    "NODE_ALGORITHMS",
    "FlowerTrainer",
    "GossipNode",
    "Node",
    "NodeConfig",
    "NodeStopped",
    "Trainer",
    "load_trainer",
    "run_id",
    "split_parts",
]
