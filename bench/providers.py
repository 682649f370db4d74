"""Benchmark providers: each runs full training steps (sampling, forward, backward, optimizer)
for every instance of a workload. ``make(name, workload, device)`` builds one; its ``run()``
does ``steps_per_call`` steps and returns without synchronising (the runner synchronises).

    eager       engine/reference.py, eager PyTorch, the notebook's way (full fp32 matmuls)
    compile     torch.compile of the same whole step (full fp32 matmuls)
    jax         jit + vmap with optax.adamw, the public JAX replication's approach (JAX's default
                matmul precision: TF32 on these GPUs)
    triton-fp32 supbench fused kernel at fp32 (exact FMA, or tf32x3 on the blocked path for m <= 32)
    triton-tf32 supbench fused kernel, TF32 tensor-core products (gram and blocked paths; the lanes
                path has no tl.dot, so tf32 trains there exactly as fp32)
    cpu         supbench fused CPU loop (numba, kernels/cpu_train.py), exact fp32, all cores

``eager`` is the torch backend's step (engine/torch_backend.py runs exactly this loop), so it is
the plain-PyTorch reference every speed-up is taken against.
"""
from __future__ import annotations

import importlib.util

import torch

from engine import ModelSpec, TrainSpec, reference
from engine import torch_backend

PROVIDERS = ("eager", "compile", "jax", "triton-fp32", "triton-tf32", "cpu")
GPU_PROVIDERS = ("eager", "compile", "jax", "triton-fp32", "triton-tf32")
CPU_PROVIDERS = ("eager", "compile", "jax", "cpu")
OURS = ("triton-fp32", "triton-tf32", "cpu")
PRECISION = {"eager": "fp32 (ieee)", "compile": "fp32 (ieee)", "jax": "JAX default (TF32 on H100/H200)",
             "triton-fp32": "fp32 (ieee; blocked path, m <= 32: tf32x3)", "triton-tf32": "tf32 (tl.dot path; small models have no tl.dot)",
             "cpu": "fp32 (ieee, FMA)"}


def available(name: str, device: str) -> str | None:
    """None if the provider can run here, else why not."""
    if name == "jax" and importlib.util.find_spec("jax") is None:
        return "jax not installed"
    if name.startswith("triton") and importlib.util.find_spec("triton") is None:
        return "triton not installed"
    if name == "cpu" and importlib.util.find_spec("numba") is None:
        return "numba not installed"
    if name == "cpu" and device != "cpu":
        return "the cpu provider runs on the CPU only"
    return None


class _TorchState:
    def __init__(self, wl, device, dtype=torch.float32):
        p, imp = wl.arrays()
        self.p = torch.as_tensor(p, device=device)
        self.imp = torch.as_tensor(imp, device=device)
        self.model = ModelSpec(wl.n, wl.m)
        self.train = TrainSpec(batch_size=wl.batch)
        self.W = reference.init_weights(self.model, 0, torch.arange(wl.K)).to(device)
        self.b = torch.zeros(wl.K, wl.n, device=device)
        self.states = [reference.AdamState(torch.zeros_like(self.W), torch.zeros_like(self.W)),
                       reference.AdamState(torch.zeros_like(self.b), torch.zeros_like(self.b))]


class Eager(_TorchState):
    steps_per_call = 1

    def __init__(self, wl, device):
        super().__init__(wl, device)
        self.gen = torch_backend.data_generator(0, 0, device)
        self.t = 0

    def run(self):
        self.t += 1
        x = reference.sample_batch(self.p, self.train.batch_size, self.gen)
        return reference.train_step(self.W, self.b, x, self.imp, self.model.variant, self.states, self.t,
                                    self.train.lr, self.train)


class Compiled(_TorchState):
    """The whole step (sampling included) under torch.compile; step and lr are tensors so the
    graph is compiled once."""

    steps_per_call = 1

    def __init__(self, wl, device):
        super().__init__(wl, device)
        model, train = self.model, self.train

        def step(W, b, mW, vW, mb, vb, p, imp, t, lr):
            u = torch.rand(p.shape[0], train.batch_size, p.shape[1], device=p.device)
            x = reference.features_from_uniform(u, p)
            states = [reference.AdamState(mW, vW), reference.AdamState(mb, vb)]
            return reference.train_step(W, b, x, imp, model.variant, states, t, lr, train)

        self.fn = torch.compile(step)
        self.t = torch.zeros((), device=device)
        self.lr = torch.tensor(train.lr, device=device)

    def run(self):
        self.t += 1
        s = self.states
        return self.fn(self.W, self.b, s[0].m, s[0].v, s[1].m, s[1].v, self.p, self.imp, self.t, self.lr)


def _jax_adamw(train):
    """AdamW in plain JAX (torch.optim.AdamW's formula), for machines without optax."""
    import jax
    import jax.numpy as jnp

    class Opt:
        @staticmethod
        def init(params):
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            return (jnp.zeros((), jnp.int32), zeros, zeros)

        @staticmethod
        def update(g, state, params):
            t, m, v = state
            t = t + 1
            m = jax.tree_util.tree_map(lambda m, g: train.beta1 * m + (1 - train.beta1) * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: train.beta2 * v + (1 - train.beta2) * g * g, v, g)
            c1, c2 = 1 - train.beta1 ** t, 1 - train.beta2 ** t
            upd = jax.tree_util.tree_map(
                lambda p, m, v: -train.lr * (m / c1 / (jnp.sqrt(v / c2) + train.eps) + train.weight_decay * p),
                params, m, v)
            return upd, (t, m, v)

    return Opt


class Jax:
    """jit(vmap(step)) with optax.adamw (plain-JAX AdamW where optax is missing); per-instance
    keys split from one key each step."""

    steps_per_call = 1

    def __init__(self, wl, device):
        import jax
        import jax.numpy as jnp

        p, imp = wl.arrays()
        train = TrainSpec(batch_size=wl.batch)
        try:
            import optax
            opt = optax.adamw(train.lr, b1=train.beta1, b2=train.beta2, eps=train.eps, weight_decay=train.weight_decay)
            apply_updates = optax.apply_updates
            self.optimizer = f"optax {optax.__version__} adamw"
        except ImportError:
            opt = _jax_adamw(train)
            apply_updates = lambda params, upd: jax.tree_util.tree_map(lambda a, b: a + b, params, upd)  # noqa: E731
            self.optimizer = "plain-JAX adamw (optax not installed)"
        W0 = reference.init_weights(ModelSpec(wl.n, wl.m), 0, torch.arange(wl.K)).numpy()
        params = (jnp.asarray(W0), jnp.zeros((wl.K, wl.n), jnp.float32))

        def loss_fn(params, x, imp):
            W, b = params
            z = (x @ W.T) @ W + b
            return jnp.mean(imp * (jax.nn.relu(z) - x) ** 2)

        def one(params, opt_state, key, p, imp):
            u = jax.random.uniform(key, (wl.batch, wl.n))
            x = jnp.where(u < p, u / p, 0.0)
            loss, g = jax.value_and_grad(loss_fn)(params, x, imp)
            updates, opt_state = opt.update(g, opt_state, params)
            return apply_updates(params, updates), opt_state, loss

        @jax.jit
        def step(params, opt_state, key, p, imp):
            key, sub = jax.random.split(key)
            keys = jax.random.split(sub, wl.K)
            params, opt_state, loss = jax.vmap(one)(params, opt_state, keys, p, imp)
            return params, opt_state, key, loss

        self.step = step
        self.params = params
        self.opt_state = jax.vmap(opt.init)(params)
        self.key = jax.random.PRNGKey(0)
        self.p, self.imp = jnp.asarray(p), jnp.asarray(imp)

    def run(self):
        self.params, self.opt_state, self.key, loss = self.step(self.params, self.opt_state, self.key, self.p, self.imp)
        return loss

    def sync(self):
        import jax
        jax.block_until_ready(self.params)


class Triton:
    """The fused kernel, ``steps_per_call`` steps per launch (the engine runs 500 per launch)."""

    def __init__(self, wl, device, precision, steps_per_call):
        from engine import triton_backend as tb  # needs triton; imported only for this provider

        self.tb = tb
        p, imp = wl.arrays()
        self.model = ModelSpec(wl.n, wl.m)
        self.train = TrainSpec(batch_size=wl.batch, steps=10_000, precision=precision)
        self.p = torch.as_tensor(p, device=device)
        self.imp = torch.as_tensor(imp, device=device)
        self.state = tb.new_state(self.model, self.train, 0, wl.K, device)
        self.sched = tb.schedule_table(self.train, device)
        self.loss = torch.zeros(wl.K, device=device)
        self.steps_per_call = steps_per_call
        self.t = 0

    def run(self):
        # Cycle through the first steps of the schedule; the cost does not depend on t.
        t0 = self.t % (self.train.steps - self.steps_per_call)
        self.tb.run_steps(self.model, self.train, self.state, self.p, self.imp, 0, t0, self.steps_per_call, self.loss,
                     sched=self.sched)
        self.t += self.steps_per_call
        return self.loss


class Cpu:
    """The fused CPU loop, ``steps_per_call`` steps per compiled call, on every core."""

    def __init__(self, wl, device, steps_per_call):
        from engine import cpu_backend, fused  # needs numba; imported only for this provider

        self.cb = cpu_backend
        cpu_backend.set_threads(cpu_backend.max_threads())
        p, imp = wl.arrays()
        self.model = ModelSpec(wl.n, wl.m)
        self.train = TrainSpec(batch_size=wl.batch, steps=10_000)
        self.p, self.imp = torch.as_tensor(p), torch.as_tensor(imp)
        self.state = fused.new_state(self.model, self.train, 0, wl.K)
        self.sched = fused.schedule_table(self.train)
        self.loss = torch.zeros(wl.K)
        self.steps_per_call = steps_per_call
        self.t = 0

    def run(self):
        t0 = self.t % (self.train.steps - self.steps_per_call)  # the cost does not depend on t
        self.cb.run_steps(self.model, self.train, self.state, self.p, self.imp, 0, t0, self.steps_per_call, self.loss,
                          sched=self.sched)
        self.t += self.steps_per_call
        return self.loss

    @property
    def W(self):
        return self.state["W"]


def make(name: str, wl, device: str, triton_steps_per_call: int = 100, cpu_steps_per_call: int = 5):
    if name == "eager":
        return Eager(wl, device)
    if name == "compile":
        return Compiled(wl, device)
    if name == "jax":
        return Jax(wl, device)
    if name in ("triton-fp32", "triton-tf32"):
        return Triton(wl, device, name.split("-")[1], triton_steps_per_call)
    if name == "cpu":
        return Cpu(wl, device, cpu_steps_per_call)
    raise ValueError(f"provider: must be one of {', '.join(PROVIDERS)} (got {name!r})")


def synchronize(provider, device: str) -> None:
    if hasattr(provider, "sync"):
        provider.sync()
    elif device.startswith("cuda"):
        torch.cuda.synchronize()
