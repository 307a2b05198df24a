"""Acceptance run of pyprobtf.testing.verify: other libraries' flows, torch.distributions, every pyprobtf family,
the mutation suite and the false-positive rate over repeated seeds.

Parts (each writes benchmarks/results/verify-<part>-cpu.json; ``table`` joins them into verify-cpu.md):

- ``peers``: zuko, nflows and normflows flows (trained 30 Adam steps by maximum likelihood on 2-D moons,
  as their users train them, or at initialisation in higher dimensions), zuko and torch.distributions
  transforms, torch distributions; ``verify(obj)`` at its defaults (float64 copies).
- ``families``: every pyprobtf family (trained 60 steps on 8gaussians); ODE-based families with an RK4 grid
  of 32 steps and tolerances 5e-3 (their inverse and log-determinant are numerical solves: the same setting
  as tests/test_families.py), stated per row.
- ``mutations``: every mutant of tests/verify_examples.py through the full ``verify`` (and the broken steps
  through the sampler checks): the share caught by the check of the property it breaks.
- ``fpr``: the correct objects of tests/verify_examples.py over ``--seeds`` seeds (the ODE checks are
  deterministic: their seeds repeat one run): the share
  of runs with any check failing.

Usage: python benchmarks/bench_verify.py --part peers|families|mutations|fpr|table [--seeds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import _common  # noqa: E402

from pyprobtf.testing import verify, verify_ode_order, verify_sde_stationary, verify_sde_weak_order  # noqa: E402

NAME = "verify"
SHORT = {"invertibility": "inv", "log_det": "ladj", "density_normalization": "density",
         "sample_log_prob": "gof p", "batch_invariance": "batch", "reproducibility": "seed",
         "dtype_agreement": "f32/f64", "finite_gradients": "grads"}


def _moons(n=512, seed=0):
    from pyprobtf.data import toy

    return toy("moons", n, seed=seed).float()


def _train(loss_fn, params, steps=30, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr)
    data = _moons()
    for i in range(steps):
        batch = data[torch.randint(0, data.shape[0], (128,), generator=torch.Generator().manual_seed(i))]
        opt.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        opt.step()


# ----------------------------------------------------------------------------- the objects


def _zuko(cls, **kw):
    import zuko

    def make():
        torch.manual_seed(0)
        flow = getattr(zuko.flows, cls)(2, **kw)
        _train(lambda x: -flow().log_prob(x).mean(), flow.parameters())
        return flow

    return make


def _nflows(build):
    def make():
        torch.manual_seed(0)
        flow = build()
        _train(lambda x: -flow.log_prob(x).mean(), flow.parameters())
        return flow

    return make


def _nflows_flow(*transforms_fn, dim=2):
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform

    return lambda: Flow(CompositeTransform([t() for t in transforms_fn]), StandardNormal([dim]))


def _normflows(build):
    def make():
        torch.manual_seed(0)
        flow = build()
        _train(lambda x: -flow.log_prob(x).mean(), flow.parameters())
        return flow

    return make


def _resnet(features_in, features_out):
    """The conditioner nflows' coupling transforms call as net(inputs, context)."""
    from nflows.nn.nets import ResidualNet

    return ResidualNet(features_in, features_out, hidden_features=32, num_blocks=1)


def peer_objects():
    import normflows as nf
    import zuko
    from nflows import transforms as T
    from nflows.flows import MaskedAutoregressiveFlow, SimpleRealNVP

    D = torch.distributions
    objs = []
    # SOSPF, BPF and NAF invert by bisection to zuko's eps = 1e-6 (zuko.transforms.MonotonicTransform): their
    # inverse is held to that, not to float64 rounding.
    numerical_inverse = {"rtol": 1e-5}
    # NAF is left out for time (one verify() took over 4 minutes on the shared machine); zuko's RealNVP is a
    # subclass of its NICE with the same defaults (zuko.flows.coupling), so it is not counted twice.
    for cls, settings in [("MAF", {}), ("NSF", {}), ("NICE", {}), ("SOSPF", numerical_inverse),
                          ("BPF", numerical_inverse)]:
        objs.append(("zuko", f"flows.{cls}(2) trained", _zuko(cls), settings))
    mask = torch.tensor([1.0, 0.0])
    objs += [
        ("nflows", "MaskedAutoregressiveFlow trained", _nflows(lambda: MaskedAutoregressiveFlow(
            features=2, hidden_features=32, num_layers=3, num_blocks_per_layer=2)), {}),
        ("nflows", "SimpleRealNVP trained", _nflows(lambda: SimpleRealNVP(
            features=2, hidden_features=32, num_layers=4, num_blocks_per_layer=2)), {}),
        ("nflows", "Flow(MaskedPiecewiseRQSAutoregressive x2 + ReversePermutation) trained", _nflows(_nflows_flow(
            lambda: T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(2, 32, num_bins=8, tails="linear",
                                                                              tail_bound=4.0),
            lambda: T.ReversePermutation(2),
            lambda: T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(2, 32, num_bins=8, tails="linear",
                                                                              tail_bound=4.0))), {}),
        ("nflows", "Flow(PiecewiseRQSCoupling + LULinear + AffineCoupling) trained", _nflows(_nflows_flow(
            lambda: T.PiecewiseRationalQuadraticCouplingTransform(mask, _resnet, num_bins=8, tails="linear",
                                                                  tail_bound=4.0),
            lambda: T.LULinear(2),
            lambda: T.AffineCouplingTransform(1 - mask, _resnet))), {}),
        ("nflows", "Flow(ActNorm + MaskedAffineAutoregressive + BatchNorm) trained", _nflows(_nflows_flow(
            lambda: T.ActNorm(2),
            lambda: T.MaskedAffineAutoregressiveTransform(2, 32),
            lambda: T.RandomPermutation(2),
            lambda: T.BatchNorm(2),
            lambda: T.MaskedAffineAutoregressiveTransform(2, 32))), {}),
        ("nflows", "Flow(AdditiveCoupling + Householder + PointwiseAffine), dim 6 at init", lambda: _nflows_flow(
            lambda: T.AdditiveCouplingTransform(torch.tensor([1, 0, 1, 0, 1, 0.0]), _resnet),
            lambda: T.HouseholderSequence(6, 3),
            lambda: T.PointwiseAffineTransform(0.5, 1.5), dim=6)(), {}),
    ]

    def nf_realnvp():
        flows = []
        for _ in range(4):
            flows += [nf.flows.AffineCouplingBlock(nf.nets.MLP([1, 32, 2], init_zeros=True)),
                      nf.flows.Permute(2, mode="swap")]
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)

    def nf_nsf():
        flows = [f for _ in range(3) for f in (nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, 32),
                                               nf.flows.LULinearPermute(2))]
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)

    def nf_coupled_rqs():
        flows = [f for _ in range(3) for f in (nf.flows.CoupledRationalQuadraticSpline(2, 1, 32),
                                               nf.flows.Permute(2, mode="swap"))]
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=True), flows)

    def nf_masked_affine():
        b = torch.tensor([1.0, 0.0])
        flows = []
        for i in range(4):
            s = nf.nets.MLP([2, 32, 2], init_zeros=True)
            t = nf.nets.MLP([2, 32, 2], init_zeros=True)
            flows += [nf.flows.MaskedAffineFlow(b if i % 2 == 0 else 1 - b, t, s), nf.flows.ActNorm(2)]
        return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)

    objs += [
        ("normflows", "RealNVP (AffineCouplingBlock + Permute) trained", _normflows(nf_realnvp), {}),
        ("normflows", "NSF (AutoregressiveRQSpline + LULinearPermute) trained", _normflows(nf_nsf), {}),
        ("normflows", "CoupledRationalQuadraticSpline trained", _normflows(nf_coupled_rqs), {}),
        ("normflows", "MaskedAffineFlow + ActNorm trained", _normflows(nf_masked_affine), {}),
    ]
    objs += [
        ("zuko", "transforms.MonotonicRQSTransform", lambda: zuko.transforms.MonotonicRQSTransform(
            *torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0))), {"dim": 2}),
        ("torch", "ExpTransform", lambda: D.ExpTransform(), {"dim": 3}),
        ("torch", "SigmoidTransform", lambda: D.SigmoidTransform(), {"dim": 3}),
        ("torch", "TanhTransform", lambda: D.TanhTransform(), {"dim": 3}),
        ("torch", "SoftplusTransform", lambda: D.SoftplusTransform(), {"dim": 3}),
        ("torch", "Compose(Affine(0.5, 2), Power(3)... Exp, Affine)", lambda: D.ComposeTransform(
            [D.AffineTransform(0.5, 2.0), D.ExpTransform(), D.PowerTransform(torch.tensor(0.5)),
             D.AffineTransform(-1.0, 0.3)]), {"dim": 3}),
        ("torch", "CumulativeDistributionTransform(Normal(0.3, 1.5))", lambda: D.CumulativeDistributionTransform(
            D.Normal(torch.tensor(0.3), torch.tensor(1.5))), {"dim": 3}),
        ("torch", "MultivariateNormal (dim 2)", lambda: D.MultivariateNormal(
            torch.tensor([1.0, -1.0]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])), {}),
        ("torch", "MultivariateNormal (dim 8)", lambda: D.MultivariateNormal(
            torch.zeros(8), torch.eye(8) + 0.3), {}),
        ("torch", "LogNormal", lambda: D.LogNormal(torch.tensor(0.2), torch.tensor(0.5)), {}),
        ("torch", "Gamma(3, 2)", lambda: D.Gamma(torch.tensor(3.0), torch.tensor(2.0)), {}),
        ("torch", "Beta(2, 3)", lambda: D.Beta(torch.tensor(2.0), torch.tensor(3.0)), {}),
        ("torch", "StudentT(5)", lambda: D.StudentT(torch.tensor(5.0)), {}),
        ("torch", "MixtureSameFamily (2-D, 3 Gaussians)", lambda: D.MixtureSameFamily(
            D.Categorical(torch.tensor([0.3, 0.5, 0.2])),
            D.Independent(D.Normal(torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]]), torch.tensor(0.7)), 1)),
         {}),
        ("torch", "TransformedDistribution(Normal(3), [Affine, Tanh])", lambda: D.TransformedDistribution(
            D.Independent(D.Normal(torch.zeros(3), torch.ones(3)), 1),
            [D.AffineTransform(0.1, 0.8, event_dim=1), D.TanhTransform()]), {}),
    ]
    return objs


def family_objects():
    from pyprobtf import fit
    from pyprobtf import families as F
    from pyprobtf.data import toy

    ode = {"ode_steps": 12, "log_prob_steps": 12}

    def trained(build, steps=60, ode_rk4=False):
        def make():
            torch.manual_seed(0)
            model = build()
            fit(model, toy("8gaussians", 4000), steps=steps, batch_size=128, lr=3e-3, progress=False)
            if ode_rk4:
                model.ode_method, model.ode_steps, model.log_prob_steps = "rk4", 32, 32
            return model

        return make

    # Each log_prob and sample of these is an ODE/SDE solve: a coarser quadrature grid, and (for time on the shared
    # machine) neither the Stein test (500 gradients through the solve) nor the one-row-per-call sampling test.
    ode_tol = {"rtol": 5e-3, "ladj_rtol": 5e-3, "n_grid": 60,
               "checks": ["invertibility", "log_det", "density_normalization", "reproducibility", "dtype_agreement",
                          "finite_gradients"]}
    objs = [
        ("pyprobtf", "RealNVP", trained(lambda: F.RealNVP(dim=2, layers=4, hidden=(32, 32))), {}),
        ("pyprobtf", "Diffusion (EDM), ODE rk4 x32", trained(
            lambda: F.Diffusion(dim=2, hidden=(32, 32), sde_steps=48, **ode), ode_rk4=True), ode_tol),
        ("pyprobtf", "Diffusion (VP), ODE rk4 x32", trained(
            lambda: F.Diffusion(dim=2, hidden=(32, 32), parameterization="vp", sde_steps=48, **ode),
            ode_rk4=True), ode_tol),
        ("pyprobtf", "FlowMatching, ODE rk4 x32", trained(
            lambda: F.FlowMatching(dim=2, hidden=(32, 32), **ode), ode_rk4=True), ode_tol),
        ("pyprobtf", "ContinuousFlow, ODE rk4 x32", trained(
            lambda: F.ContinuousFlow(dim=2, hidden=(16, 16), train_steps=4, **ode), steps=20, ode_rk4=True), ode_tol),
        ("pyprobtf", "Autoregressive (binned)", trained(lambda: F.Autoregressive(dim=2, d_model=32, layers=1)), {}),
        ("pyprobtf", "Tempered(RealNVP, T=0.8)", lambda: F.Tempered(
            trained(lambda: F.RealNVP(dim=2, layers=4, hidden=(32, 32)))(), temperature=0.8), {}),
        ("pyprobtf", "VAE", trained(lambda: F.VAE(dim=2, hidden=(32, 32))), {}),
        ("pyprobtf", "GAN", trained(lambda: F.GAN(dim=2, hidden=(32, 32))), {}),
        ("pyprobtf", "Autoencoder", trained(lambda: F.Autoencoder(dim=2, hidden=(32, 32))), {}),
        ("pyprobtf", "VQVAE", trained(lambda: F.VQVAE(dim=2, hidden=(32, 32))), {}),
        ("pyprobtf", "DiscriminatorFlow", trained(lambda: F.DiscriminatorFlow(dim=2), steps=20), {}),
        ("pyprobtf", "ScoreGAN", trained(lambda: F.ScoreGAN(dim=2), steps=20), {}),
    ]
    return objs


# ----------------------------------------------------------------------------- running


def _run_objects(objs, progress=None):
    rows = []
    for library, name, make, kw in objs:
        start = time.perf_counter()
        try:
            obj = make()
            report = verify(obj, **kw)
        except Exception as exc:  # noqa: BLE001 - a row that could not be built is reported, not hidden
            rows.append({"library": library, "object": name, "verdict": "ERROR",
                         "detail": f"{type(exc).__name__}: {str(exc)[:200]}", "seconds": time.perf_counter() - start})
            print(f"{library:9s} {name:60s} ERROR {exc}", flush=True)
            continue
        row = {"library": library, "object": name, "interface": report.interface.split(":")[0],
               "settings": ", ".join(f"{k}={v:g}" for k, v in kw.items() if k not in ("dim", "checks"))
               + (f"; only {', '.join(SHORT[c] for c in kw['checks'])}" if "checks" in kw else "") or "defaults",
               "verdict": "PASS" if report.passed else "FAIL", "seconds": round(time.perf_counter() - start, 1),
               "failed": "; ".join(r.message() for r in report.failed)}
        for r in report.results:
            if r.passed is None:
                cell = "n/a"
            elif r.p_value is not None:
                cell = f"{'ok' if r.passed else 'FAIL'} p={r.p_value:.2g}"
            else:
                cell = f"{'ok' if r.passed else 'FAIL'} {r.error:.1e}"
            row[SHORT[r.check]] = cell
        rows.append(row)
        print(f"{library:9s} {name:60s} {row['verdict']} {row['seconds']:.0f}s {row['failed'][:300]}", flush=True)
        if progress is not None:
            progress(rows)
    return rows


def part_mutations():
    import verify_examples as ex

    rows = []
    for bug, prop in ex.BUGS.items():
        start = time.perf_counter()
        report = verify(ex.Coupling(3, bug=bug))
        hit = [r for r in report.results if r.check == prop and r.passed is False]
        rows.append({"mutant": bug, "kind": "flow (dim 3), full verify()", "property": prop,
                     "caught": bool(hit), "also_failed": ", ".join(r.check for r in report.failed if r.check != prop),
                     "message": hit[0].message()[:160] if hit else "",
                     "seconds": round(time.perf_counter() - start, 1)})
    for bug in ("ladj_wrong_sign", "ladj_missing_constant", "log_prob_unnormalised_5pct"):
        start = time.perf_counter()
        report = verify(ex.Coupling(150, bug=bug), checks=["log_det", "density_normalization"])
        prop = ex.BUGS[bug]
        hit = [r for r in report.results if r.check == prop and r.passed is False]
        rows.append({"mutant": bug, "kind": "flow (dim 150: Lanczos log-det, importance sampling)", "property": prop,
                     "caught": bool(hit), "also_failed": ", ".join(r.check for r in report.failed if r.check != prop),
                     "message": hit[0].message()[:160] if hit else "",
                     "seconds": round(time.perf_counter() - start, 1)})
    for bug, broken in (("BadExp (torch Transform, ladj 0)", ex.BadExp()),
                        ("NflowsStyleScale (logabsdet sign)", ex.NflowsStyleScale(3, broken=True))):
        report = verify(broken, dim=3)
        rows.append({"mutant": bug, "kind": "other interface", "property": "log_det",
                     "caught": any(r.check == "log_det" for r in report.failed), "also_failed": "",
                     "message": report.failed[0].message()[:160] if report.failed else "", "seconds": 0})
    for name, (step, kind, order, ok) in ex.STEPS.items():
        if ok:
            continue
        start = time.perf_counter()
        results = [verify_ode_order(step, order)] if kind == "ode" else [verify_sde_weak_order(step, order),
                                                                        verify_sde_stationary(step, order)]
        failed = [r for r in results if r.passed is False]
        rows.append({"mutant": name, "kind": f"{kind} step", "property": "/".join(r.check for r in results),
                     "caught": bool(failed), "also_failed": "",
                     "message": failed[0].message()[:160] if failed else "",
                     "seconds": round(time.perf_counter() - start, 1)})
    return rows


def part_fpr(seeds):
    import verify_examples as ex

    rows = []
    cases = [(f"Coupling(dim={d})", (lambda d=d: lambda s: verify(ex.Coupling(d, seed=s), seed=s))())
             for d in (1, 2, 3, 5)]
    cases.append(("Coupling(dim=150), log_det + density", lambda s: verify(
        ex.Coupling(150, seed=s), seed=s, checks=["log_det", "density_normalization"])))
    for name, (step, kind, order, ok) in ex.STEPS.items():
        if ok:
            cases.append((f"{name} step", (lambda st=step, k=kind, o=order: lambda s: (
                [verify_ode_order(st, o)] if k == "ode" else
                [verify_sde_weak_order(st, o, seed=s), verify_sde_stationary(st, o, seed=s)]))()))
    for name, run in cases:
        flagged, checks, start, why = 0, 0, time.perf_counter(), []
        for s in range(seeds):
            out = run(s)
            results = out.results if hasattr(out, "results") else out
            bad = [r for r in results if r.passed is False]
            checks += sum(r.passed is not None for r in results)
            flagged += bool(bad)
            why += [f"seed {s}: {r.check} {r.error:.3g} > {r.bound:.3g}" + (f" p={r.p_value:.2g}" if r.p_value else "")
                    for r in bad]
        rows.append({"object": name, "seeds": seeds, "checks_run": checks, "runs_flagged": flagged,
                     "false_positive_rate": f"{flagged / seeds:.3f}", "seconds": round(time.perf_counter() - start),
                     "flagged_by": "; ".join(why)[:300]})
        print(rows[-1], flush=True)
    return rows


def _table(rows, columns):
    return _common.markdown_table(rows, columns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["peers", "families", "mutations", "fpr", "table"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: verify() on two torch.distributions "
                        "objects, one table (what tests/test_benchmarks.py runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the checks run on the CPU")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="peers/families: keep the rows already written, run "
                        "the rest")
    parser.add_argument("--only", default=None, help="peers/families: rerun the objects whose name contains this, "
                        "replacing their rows in the existing results")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.quick:
        D = torch.distributions
        objs = [("torch", "ExpTransform", lambda: D.ExpTransform(), {"dim": 2}),
                ("torch", "MultivariateNormal(2)", lambda: D.MultivariateNormal(torch.zeros(2), torch.eye(2)), {})]
        rows = _run_objects(objs)
        _common.publish("verify-quick", "cpu", rows, ["library", "object", "interface", "verdict", "seconds"],
                        ["verify() with default settings; a smoke run of this script"], args.out)
        return 0
    if args.part is None:
        parser.error("give --part (or --quick)")
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    if args.part != "table":
        def progress(rows):  # a partial file after every row: a long run that is stopped keeps what it measured
            (args.out / f"verify-{args.part}-cpu.json").write_text(json.dumps({"info": {
                "seconds": round(time.perf_counter() - start), "load_start": load, "load_end": os.getloadavg()[0],
                "partial": True}, "rows": rows}, indent=1))

        def objects(make):
            objs = make()
            path = args.out / f"verify-{args.part}-cpu.json"
            if args.resume and path.exists():
                done = json.loads(path.read_text())["rows"]
                names = {r["object"] for r in done}
                return done + _run_objects([o for o in objs if o[1] not in names], lambda rows: progress(done + rows))
            if args.only is None:
                return _run_objects(objs, progress)
            path = args.out / f"verify-{args.part}-cpu.json"
            old = json.loads(path.read_text())["rows"] if path.exists() else []
            new = {r["object"]: r for r in _run_objects([o for o in objs if args.only in o[1]])}
            return [new.pop(r["object"], r) for r in old] + list(new.values())

        rows = {"peers": lambda: objects(peer_objects), "families": lambda: objects(family_objects),
                "mutations": part_mutations, "fpr": lambda: part_fpr(args.seeds)}[args.part]()
        info = {"seconds": round(time.perf_counter() - start), "load_start": load, "load_end": os.getloadavg()[0]}
        (args.out / f"verify-{args.part}-cpu.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        print(f"wrote {args.out / f'verify-{args.part}-cpu.json'} in {info['seconds']} s")
        return 0
    parts = {p: json.loads((args.out / f"verify-{p}-cpu.json").read_text())
             for p in ("peers", "families", "mutations", "fpr") if (args.out / f"verify-{p}-cpu.json").exists()}
    check_cols = list(SHORT.values())
    notes = []
    for p, data in parts.items():
        i = data["info"]
        notes.append(f"- {p}: {i['seconds']} s, load average (1 min) {i['load_start']:.1f} at the start, "
                     f"{i['load_end']:.1f} at the end, on {os.cpu_count()} cores shared with other jobs: "
                     "seconds are indicative only.")
    sections = []
    for p in ("peers", "families"):
        if p in parts:
            rows = [dict(r, settings=r.get("settings", r.get("tolerances", ""))) for r in parts[p]["rows"]]
            passed = sum(r["verdict"] == "PASS" for r in rows)
            sections.append(f"### {p}: {passed} of {len(rows)} pass\n\n" + _table(
                rows, ["library", "object", "interface", "settings", *check_cols, "seconds", "verdict", "failed"]))
    if "mutations" in parts:
        rows = parts["mutations"]["rows"]
        caught = sum(r["caught"] for r in rows)
        sections.append(f"### mutation suite: {caught} of {len(rows)} caught ({100 * caught / len(rows):.0f}%)\n\n"
                        + _table(rows, ["mutant", "kind", "property", "caught", "also_failed", "message",
                                        "seconds"]))
    if "fpr" in parts:
        rows = parts["fpr"]["rows"]
        runs = sum(r["seeds"] for r in rows)
        flagged = sum(r["runs_flagged"] for r in rows)
        sections.append(f"### false positives over repeated seeds: {flagged} of {runs} runs of correct objects "
                        f"flagged (rate {flagged / max(runs, 1):.3f})\n\n" + _table(
                            rows, ["object", "seeds", "checks_run", "runs_flagged", "false_positive_rate",
                                   "flagged_by", "seconds"]))
    info = _common.machine("cpu")
    lines = ["# verify benchmark (cpu)", "", "## Machine"] + [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Results", "", "Cells: ok/FAIL and the measured error (relative for inv, ladj, f32/f64; "
              "|mass - 1| for density; non-finite count for grads) or the p-value of the statistical checks "
              "(fail below 1e-3). Defaults: float64 copies, invertibility 1e-7, log-det 1e-6, density 0.02, "
              "float32 vs float64 2e-3.", ""]
    notes += [
        "- zuko NAF was stopped after more than 4 minutes in one verify() on the loaded machine and is not listed; "
        "zuko's RealNVP subclasses its NICE with the same defaults and is not counted twice.",
        "- Rows were measured in several runs of this script (--resume/--only after fixing the benchmark's own "
        "object definitions); the load notes give the last run of each part.",
        "- ODE-based pyprobtf families: RK4 with 32 steps, tolerances 5e-3, a 60-point quadrature grid, and the "
        "deterministic checks only (the Stein test and the one-row-per-call sampling test need hundreds of ODE "
        "solves; left out for time on the shared machine).",
    ]
    lines += ["\n\n".join(sections), "", "## Notes", *notes,
              "- Produced by `python benchmarks/bench_verify.py --part peers|families|mutations|fpr` then "
              "`--part table`."]
    path = args.out / "verify-cpu.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
