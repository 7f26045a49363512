"""Where a hyperparameter step spends its time, on the GRU and the Penn Treebank LSTM.

``onepass.optim.AdamW`` at the recipe's settings (window of 20, K = 5
Neumann terms) in the plain loop of ``benchmarks/full_size.py`` (its models
and synthetic data). Each update is split into the loop's forward, its
backward (with ``create_graph`` at the update that closes a window), and
``step()``; the closing ``step()`` is split again by timing the products the
estimator calls (``LossPart.gradient``, ``Ops.linear_update`` and the
optimizer's ``closure_val_gradient``): taking the gradient's
graph, the differentiated update, the validation gradient, the K - 1
products ``s ↦ Jᵀ s`` (each a Hessian–vector product through the gradient's
graph and a VJP through the update) and the final VJP to the hyperparameters.

Then, at the same weights and batch, one Hessian–vector product two ways:

* ``reverse-over-reverse`` (today): ``autograd.grad`` of the gradient taken
  with ``create_graph`` (the graph is built once, by the loop's backward);
* ``forward-over-reverse``: ``torch.func.jvp`` of ``torch.func.grad`` of the
  loss through ``torch.func.functional_call`` (each product re-runs the
  forward and backward with tangents; :func:`forward_over_reverse`, and
  :class:`ForwardOverReverseLosses` for a whole hyperparameter step with it).

and the Neumann series' decay at each measured hyperparameter step: the norm
of each term ``(Jᵀ)^j v`` over ``‖v‖``, and the relative error of the
hypergradient had the series stopped after ``k < K`` terms (what a K chosen
from the decay would change)::

    python benchmarks/hyperstep_profile.py                       # GRU and LSTM, --size cpu
    python benchmarks/hyperstep_profile.py --only gru_adding --hypersteps 3 --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, jvp

import onepass.optim
import onepass.optim.gradients as optim_gradients
from onepass.core.products import BatchLosses, Gradient, LossPart, Ops

HOOKED = ((LossPart, "gradient"), (Ops, "linear_update"), (optim_gradients, "closure_val_gradient"))
"""Where :func:`timed_products` hooks in, and restores on leaving."""

sys.path.insert(0, str(Path(__file__).resolve().parent))
import full_size  # noqa: E402  (the models, their synthetic data and the plain loop's settings)

MODELS = ("gru_adding", "penn_treebank")
PARTS = ("graph", "update", "val_gradient", "products", "to_hyper")


# ----------------------------------------------------------------------------- Hessian–vector products

def float_inputs(batch) -> list[int]:
    """Indices of the batch's floating-point tensors (inputs and targets)."""
    return [i for i, x in enumerate(batch) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def forward_over_reverse(loss_fn, weights, batch, vector):
    """``∇²L_T(weights) · vector`` as ``torch.func.jvp`` of ``torch.func.grad`` of
    ``loss_fn(weights, batch)`` (a pure function of the weights, as
    :class:`onepass.core.products.Ops` takes).

    Two things keep it working where a plain ``jvp(grad(...))`` fails on CPU:

    * every floating-point tensor of the batch is a primal with an explicit
      zero tangent: without one, forward-mode AD gives it a ``ZeroTensor``
      tangent, and ``mse_loss``'s backward writes into it in place
      ("ZeroTensors are immutable") — this, not ``nn.GRU``, is what failed
      on the GRU of the adding problem (``F.mse_loss`` fails alone, on an
      ``nn.Linear``; the GRU with a hand-written squared error works);
    * oneDNN (mkldnn) is off: on CPU a float32 ``nn.LSTM`` runs
      ``mkldnn_rnn_layer``, which has no forward-mode derivative.
    """
    batch = tuple(batch)
    floats = float_inputs(batch)

    def gradient(w, tensors):
        full = list(batch)
        for i, t in zip(floats, tensors):
            full[i] = t
        return grad(lambda ws: loss_fn(ws, tuple(full)))(w)

    primals = tuple(batch[i] for i in floats)
    with torch.backends.mkldnn.flags(enabled=False):
        _, product = jvp(gradient, (tuple(weights), primals),
                         (tuple(vector), tuple(torch.zeros_like(t) for t in primals)))
    return product


def model_loss(model, loss):
    """``loss(model, batch)`` as ``(weights, batch) ↦`` the loss with ``weights``
    in place of the model's parameters (``torch.func.functional_call``)."""
    names = [n for n, _ in model.named_parameters()]

    def loss_fn(weights, batch):
        return loss(_Functional(model, dict(zip(names, weights))), batch)
    return loss_fn


class ForwardOverReverseLosses(BatchLosses):
    """:class:`~onepass.core.products.BatchLosses` (``torch.func``) whose
    products ``r ↦ ∇²L_T r`` are :func:`forward_over_reverse` instead of the
    reverse pass through the gradient's graph: the loss's part changes, the
    estimator and the rule's part do not."""

    def gradient(self, weights, batch, graph=False):
        plain = super().gradient(weights, batch)
        if not graph:
            return plain
        return Gradient(plain.grads, plain.loss, lambda r: forward_over_reverse(self.loss, weights, batch, r))


class _Functional:
    """``model`` called with ``tensors`` in place of its parameters; other
    attributes are the model's."""

    def __init__(self, model, tensors):
        self.model, self.tensors = model, tensors

    def __call__(self, *args, **kwargs):
        return functional_call(self.model, self.tensors, args, kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def reverse_over_reverse(loss_fn, weights, batch):
    """``(gradient with its graph, its leaves)``: today's products are
    ``autograd.grad(gradient, leaves, r, retain_graph=True)``."""
    leaves = tuple(w.detach().requires_grad_() for w in weights)
    return torch.autograd.grad(loss_fn(leaves, batch), leaves, create_graph=True), leaves


def hvp_timings(model, loss, batch, repeats: int = 3) -> dict:
    """Median seconds of one gradient, one gradient with its graph, and one
    Hessian–vector product each way, at the model's weights and ``batch``."""
    weights = tuple(p.detach() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    vector = tuple(torch.randn(w.shape, generator=g, dtype=w.dtype) for w in weights)
    carrier = batch[2] if len(batch) == 3 else None
    hidden = None if carrier is None else carrier.hidden

    def fresh():   # the LSTM's carried state: every call starts from the same one
        if carrier is not None:
            carrier.hidden = hidden

    loss_fn = model_loss(model, loss)

    def plain():
        fresh()
        leaves = tuple(w.detach().requires_grad_() for w in weights)
        torch.autograd.grad(loss_fn(leaves, batch), leaves)

    graph = {}

    def with_graph():
        fresh()
        graph["g"], graph["leaves"] = reverse_over_reverse(loss_fn, weights, batch)

    def ror():
        torch.autograd.grad(graph["g"], graph["leaves"], vector, retain_graph=True)

    def forward():
        fresh()
        forward_over_reverse(loss_fn, weights, batch, vector)

    out = {name: _median_seconds(fn, repeats) for name, fn in
           (("gradient", plain), ("gradient_with_graph", with_graph), ("hvp_reverse_over_reverse", ror),
            ("hvp_forward_over_reverse", forward))}
    fresh()
    return out


def _median_seconds(fn, repeats: int) -> float:
    fn()   # warm
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# ----------------------------------------------------------------------------- the loop, timed

class Timer:
    """Seconds per part of the current update, and the Neumann terms it took."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self.terms: list = []
        self.contributions: list = []
        self.gradient = None
        self.diagnostics = 0.0

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


def _flat(tree) -> torch.Tensor:
    if isinstance(tree, dict):
        return torch.cat([_flat(v) for v in tree.values()]) if tree else torch.zeros(0)
    if isinstance(tree, (tuple, list)):
        return torch.cat([_flat(v) for v in tree]) if tree else torch.zeros(0)
    return tree.detach().double().reshape(-1)


@contextlib.contextmanager
def timed_products(timer: Timer):
    """Time the estimator's calls (:data:`HOOKED`; and keep the Neumann terms)."""
    originals = {(owner, name): owner.__dict__[name] for owner, name in HOOKED}
    gradient, linear_update, val_gradient = (getattr(owner, name) for owner, name in HOOKED)

    def clocked(part, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            timer.add(part, time.perf_counter() - start)
            return out
        return wrapper

    def timed_gradient(self, weights, graph):
        fn = clocked("graph", gradient) if graph else gradient
        out = fn(self, weights, graph)
        if graph:
            timer.gradient = out
        return out

    def timed_update(self, *args, **kwargs):
        update = clocked("update", linear_update)(self, *args, **kwargs)
        backward = update.backward

        def products(ct, ct_state=None, wrt=("weights", "state", "raw")):
            start = time.perf_counter()
            out = backward(ct, ct_state, wrt=wrt)
            part = "products" if tuple(wrt) == ("weights",) else "to_hyper"
            timer.add(part, time.perf_counter() - start)
            if part == "products":
                begin = time.perf_counter()
                if not timer.terms:
                    timer.terms.append(tuple(c.detach().clone() for c in ct))   # v
                timer.terms.append(tuple(o.detach().clone() for o in out[0]))  # (Jᵀ)^j v
                timer.diagnostics += time.perf_counter() - begin
            else:   # diagnostics, left out of the step's time: each term's share of the
                # hypergradient (it is linear in p), and one HVP alone on the same graph
                begin = time.perf_counter()
                timer.contributions = [_flat(backward(term, None, wrt=("raw",))[0]) for term in timer.terms]
                if timer.gradient is not None and timer.gradient.hvp is not None:
                    start = time.perf_counter()
                    timer.gradient.hvp(timer.terms[-1])
                    timer.add("hvp_alone", time.perf_counter() - start)
                timer.diagnostics += time.perf_counter() - begin
            return out
        update.backward = products
        return update

    LossPart.gradient = timed_gradient
    Ops.linear_update = timed_update
    optim_gradients.closure_val_gradient = clocked("val_gradient", val_gradient)
    try:
        yield timer
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


def neumann_decay(terms, contributions) -> dict:
    """‖(Jᵀ)^j v‖ / ‖v‖ per term, and the hypergradient's relative error had the
    series stopped after k terms (k = 1 … K)."""
    norms = [float(torch.linalg.vector_norm(_flat(t))) for t in terms]
    full = sum(contributions)
    scale = float(torch.linalg.vector_norm(full)) or 1.0
    errors = [float(torch.linalg.vector_norm(full - sum(contributions[:k]))) / scale
              for k in range(1, len(contributions) + 1)]
    # what the K - 1 products add beyond K copies of v's own share (Jᵀ ≈ I when lr is small)
    without_products = float(torch.linalg.vector_norm(full - len(contributions) * contributions[0])) / scale
    return {"term_norm_ratio": [n / norms[0] for n in norms], "truncation_error": errors,
            "error_of_k_times_v": without_products}


def profile(name: str, size: str = "cpu", hypersteps: int = 2, plain_updates: int = 5, repeats: int = 3) -> dict:
    """The loop's updates of onepass on ``name``, split into parts (seconds,
    medians over the timed updates), the HVP alternatives and the Neumann decay."""
    model, loss, batch, val_batch, clip = full_size.setup(name, "cpu", size)
    hyper = full_size.ADAMW_HYPER
    opt = onepass.optim.AdamW(model.parameters(), **hyper, val_loss=lambda: loss(model, val_batch()), model=model)
    bare_model, *_ = full_size.setup(name, "cpu", size)
    bare = torch.optim.AdamW(bare_model.parameters(), **hyper)
    tuner = opt.tuner
    interval = tuner.update_interval
    records = {"plain": [], "closing": [], "bare": [], "untimed": []}
    decays = []
    last_batch = None

    def update(optimizer, net, kind):
        nonlocal last_batch
        timer = Timer()
        optimizer.zero_grad(set_to_none=True)
        b = batch()
        start = time.perf_counter()
        value = loss(net, b)
        timer.add("forward", time.perf_counter() - start)
        graph = getattr(optimizer, "needs_graph", False)
        start = time.perf_counter()
        value.backward(create_graph=graph)
        timer.add("backward", time.perf_counter() - start)
        start = time.perf_counter()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        with timed_products(timer) if graph else contextlib.nullcontext():
            optimizer.step()
        timer.add("step", time.perf_counter() - start)
        timer.parts["total"] = sum(timer.parts[k] for k in ("forward", "backward", "step"))
        timer.parts["step"] -= timer.diagnostics     # they ran inside step(): not part of it
        timer.parts["total"] -= timer.diagnostics
        records[kind].append(timer.parts)
        if graph and timer.contributions and kind == "closing":
            decays.append(neumann_decay(timer.terms, timer.contributions))
        if optimizer is opt:
            last_batch = b

    while len(records["closing"]) < hypersteps:   # the first window is left out (allocation, caches)
        position = tuner.position(tuner.steps_taken + 1)
        warm = tuner.steps_taken >= interval
        closing = position == tuner.update_interval
        # a plain update, not the one after a closing update (it frees that update's graph)
        timed_plain = warm and not closing and position != 1 and len(records["plain"]) < plain_updates
        update(opt, model, "closing" if closing and warm else "plain" if timed_plain else "untimed")
        if timed_plain:
            update(bare, bare_model, "bare")
    records.pop("untimed", None)
    medians = {kind: {part: statistics.median(r[part] for r in rs if part in r)
                      for part in sorted({p for r in rs for p in r})} for kind, rs in records.items() if rs}
    closing = medians["closing"]
    closing["products_each"] = closing.get("products", 0.0) / max(1, len(decays[0]["term_norm_ratio"]) - 1) \
        if decays else None
    hvp = hvp_timings(model, loss, last_batch, repeats)
    plain = medians["plain"]["total"]
    terms = len(decays[0]["term_norm_ratio"]) if decays else None
    return {"model": name, "size": size, "interval": interval, "neumann_terms": terms, "medians": medians,
            "closing_in_plain_updates": closing["total"] / plain,
            "window_ratio": ((interval - 1) * plain + closing["total"]) / (interval * medians["bare"]["total"]),
            "hvp": hvp, "hvp_forward_over_reverse_per_reverse": hvp["hvp_forward_over_reverse"]
            / hvp["hvp_reverse_over_reverse"], "neumann": decays}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--size", choices=full_size.SIZES, default="cpu")
    p.add_argument("--hypersteps", type=int, default=2, help="closing updates timed (default 2)")
    p.add_argument("--plain", type=int, default=5, help="plain updates timed, each with a bare one (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each HVP timing (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.only:
        r = profile(name, args.size, args.hypersteps, args.plain, args.repeats)
        results[name] = r
        m = r["medians"]
        c, pl, h = m["closing"], m["plain"], r["hvp"]
        print(f"\n{name} ({args.size}): bare update {m['bare']['total'] * 1e3:.1f} ms, onepass plain "
              f"{pl['total'] * 1e3:.1f} ms, closing {c['total'] * 1e3:.1f} ms "
              f"(= {r['closing_in_plain_updates']:.1f} plain updates; window of {r['interval']}: "
              f"{r['window_ratio']:.2f}x bare)")
        print("  closing update, ms: " + ", ".join(
            f"{k} {c[k] * 1e3:.1f}" for k in ("forward", "backward", "step", *PARTS, "products_each", "hvp_alone")
            if c.get(k) is not None)
            + f" (plain backward {pl['backward'] * 1e3:.1f})")
        print(f"  one HVP at the same weights, ms: reverse-over-reverse {h['hvp_reverse_over_reverse'] * 1e3:.1f} "
              f"(+ graph: gradient with graph {h['gradient_with_graph'] * 1e3:.1f} vs without "
              f"{h['gradient'] * 1e3:.1f}), forward-over-reverse {h['hvp_forward_over_reverse'] * 1e3:.1f} "
              f"({r['hvp_forward_over_reverse_per_reverse']:.2f}x)")
        for d in r["neumann"]:
            print("  Neumann ‖(Jᵀ)^j v‖/‖v‖: " + " ".join(f"{x:.3g}" for x in d["term_norm_ratio"])
                  + "; hypergradient error stopping after k terms: "
                  + " ".join(f"{x:.2g}" for x in d["truncation_error"])
                  + f"; K·v instead of the series: error {d['error_of_k_times_v']:.2g}")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads,
                                         "machine": platform.processor() or platform.machine(),
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
