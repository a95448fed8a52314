"""Trained compression on MNIST: Deep Compression's Table 1 rows, its schedules, and QAT.

For each network (LeNet-300-100; LeNet-5, Caffe variant) a float32 model is trained once
(examples/deep_compression_mnist.py), then each schedule starts from a copy of it:

- ``qpack.torch.deep_compression`` with per-layer sparsities from the sensitivity scan or
  given by hand, L2 / L1 / no regularization, optional distillation;
- quantization-aware training (``quantize_aware``, linear codes, groups of 64) against
  post-training linear quantization at the same bits;
- post-training pruning + K-means without retraining, the collapse the recipe fixes.

Every compressed model is saved, loaded back through ``load_packed`` and scored on the
test set; ratio = float32 bytes of all parameters / .qpk file bytes. Seconds and peak
RSS are per schedule (float training excluded; it has its own row). A PNG plots test
error against ratio for every schedule and stage, with Deep Compression's and Soft
Weight-Sharing's published points.

Full mode needs the four MNIST idx files in the folder named by ``QPACK_MNIST_DIR``;
``QPACK_BENCH_TRAINED_NETS=lenet5`` reruns one network and keeps the other's rows from
the last full run (said in the notes);
quick mode (CI) runs LeNet-300-100's shape on scikit-learn's 8x8 digits with short
schedules. Needs torch (skipped otherwise); the PNG needs matplotlib (the bench extra).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

from harness import DOCS_DIR, PeakRSS, load_example, optional_peer, pyplot

# published points: (method, net, float error %, compressed error %, ratio)
PUBLISHED = [
    ("Deep Compression (Han et al., ICLR 2016, Table 1)", "lenet300", 1.64, 1.58, 40),
    ("Deep Compression (Han et al., ICLR 2016, Table 1)", "lenet5", 0.80, 0.74, 39),
    ("Soft weight-sharing (Ullrich et al., ICLR 2017, Table 1)", "lenet300", 1.89, 1.94, 64),
    ("Soft weight-sharing (Ullrich et al., ICLR 2017, Table 1)", "lenet5", 0.88, 0.97, 162),
]
NET_TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5 (Caffe)"}
QAT_GROUP = 64
# L1 at a strength whose pull (5e-6 per weight) equals the default L2's (2 * 5e-5 * |w|)
# at |w| = 0.05, a typical trained weight here
L1 = {"regularization": "l1", "regularization_strength": 5e-6}


def schedules(mnist, net: str, quick: bool) -> list[tuple[str, dict]]:
    """(label, deep_compression keyword arguments) for every recipe run on ``net``; the
    first is the example's recipe (its Table 1 row)."""
    if quick:
        base = dict(prune_rounds=2, retrain_epochs=2, finetune_epochs=1, lr=0.01)
        return [("scan 90%, L2", dict(base, sparsity=0.9)),
                ("scan 90%, L1", dict(base, sparsity=0.9, **L1))]
    example = mnist.recipe_settings(net, False)
    kept = f"{100 * example['sparsity']:.3g}%"
    hand = dict(example, **mnist.HAND_PICKED[net])
    if net == "lenet5":
        return [(f"scan {kept}, L2 (the example)", example),
                ("hand-picked per-layer sparsity and bits, L2", hand)]
    distil = dict(example, bits=4, distill_temperature=4.0)
    return [(f"scan {kept}, L2 5e-5 (the example)", example),
            ("hand-picked per-layer sparsity and bits, L2", hand),
            (f"scan {kept}, L1 5e-6", dict(example, **L1)),
            (f"scan {kept}, no regularization", dict(example, regularization=None)),
            ("scan 95%, 4-bit, distilled (T=4)", dict(distil, sparsity=0.95))]


def _bits_label(bits: dict) -> str:
    return "/".join(str(b) for b in dict.fromkeys(bits.values()))


def _saved_error(torch, mnist, net: str, cm, t: dict) -> tuple[float, int]:
    """Test error of ``cm`` saved and run through load_packed, and the file's bytes."""
    import qpack.torch as qt

    with tempfile.TemporaryDirectory(prefix="qpack-bench-trained-") as folder:
        path = os.path.join(folder, "model.qpk")
        size = cm.save(path)
        packed = qt.load_packed(mnist.build(torch, net, t["side"]), path)
        return mnist.top1_error(torch, packed, t), size


def recipe_rows(torch, mnist, net: str, model, t: dict, float_err: float,
                float_bytes: int, quick: bool) -> tuple[list[list], list[dict]]:
    """One row per deep_compression schedule, and the points (stages) for the plot."""
    rows, points = [], []
    for label, recipe in schedules(mnist, net, quick):
        torch.manual_seed(1)
        work = copy.deepcopy(model)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            out = mnist.compress_net(torch, net, work, t, **recipe)
        seconds = time.perf_counter() - t0
        sched = out["schedule"]
        sparsity = ", ".join(f"{n.split('.')[0]}:{100 * (1 - a):.0f}%"
                             for n, a in sched["sparsity"].items())
        print(f"  {net}, {label}: {out['err']:.2f}% error at "
              f"{float_bytes / out['bytes']:.1f}x ({seconds:.0f} s)", flush=True)
        rows.append([NET_TITLES[net], f"deep_compression: {label}", f"{float_err:.2f}",
                     f"{out['err']:.2f}", f"{out['err'] - float_err:+.2f}",
                     f"{out['bytes']:,}", f"{float_bytes / out['bytes']:.1f}",
                     f"{100 * out['kept']:.1f} ({sparsity})", _bits_label(sched["bits"]),
                     f"{seconds:.0f}", f"{mem.peak / 2**20:.0f}"])
        for h in out["history"]:
            points.append({"net": net, "schedule": label, "stage": h["stage"],
                           "kept": h["kept"], "error": h["metric"],
                           "ratio": float_bytes / h["bytes"] if h["bytes"] else None})
        points[-1]["error"] = out["err"]  # the final point: as run from the saved file
    return rows, points


def qat_rows(torch, mnist, net: str, model, t: dict, float_err: float, float_bytes: int,
             quick: bool) -> tuple[list[list], list[dict]]:
    """Post-training linear quantization and QAT at 4 and 2 bits (groups of QAT_GROUP)."""
    import qpack
    import qpack.torch as qt

    rows, points = [], []
    epochs = 2 if quick else 3
    for bits in (4, 2):
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            cm = qpack.compress(model, method="linear", bits=bits, group_size=QAT_GROUP,
                                min_numel=0, overrides={"*.bias": {"method": "raw"}})
            err, size = _saved_error(torch, mnist, net, cm, t)
        ptq = [NET_TITLES[net], f"post-training linear {bits}-bit g{QAT_GROUP}",
               f"{float_err:.2f}", f"{err:.2f}", f"{err - float_err:+.2f}", f"{size:,}",
               f"{float_bytes / size:.1f}", "100", str(bits),
               f"{time.perf_counter() - t0:.1f}", f"{mem.peak / 2**20:.0f}"]
        points.append({"net": net, "schedule": f"post-training linear {bits}-bit",
                       "stage": "final", "kept": 1.0, "error": err,
                       "ratio": float_bytes / size})
        torch.manual_seed(1)
        work = copy.deepcopy(model)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            qt.quantize_aware(work, bits, group_size=QAT_GROUP)
            opt = torch.optim.SGD(work.parameters(), lr=0.01, momentum=0.9)
            mnist.train_epochs(torch, work, t, opt, epochs, seed=1)
            err, size = _saved_error(torch, mnist, net, qt.to_qpack(work), t)
        qat = [NET_TITLES[net], f"QAT linear {bits}-bit g{QAT_GROUP}, {epochs} epochs",
               f"{float_err:.2f}", f"{err:.2f}", f"{err - float_err:+.2f}", f"{size:,}",
               f"{float_bytes / size:.1f}", "100", str(bits),
               f"{time.perf_counter() - t0:.0f}", f"{mem.peak / 2**20:.0f}"]
        points.append({"net": net, "schedule": f"QAT linear {bits}-bit", "stage": "final",
                       "kept": 1.0, "error": err, "ratio": float_bytes / size})
        rows += [ptq, qat]
    return rows, points


def post_training_prune_row(torch, mnist, net: str, model, t: dict, float_err: float,
                            float_bytes: int, sparsity: float) -> tuple[list, dict]:
    """Magnitude pruning + 5-bit K-means with no retraining (qpack.compress alone)."""
    import qpack

    cm = qpack.compress(model, method="kmeans", bits=5, prune=sparsity, min_numel=0,
                        overrides={"*.bias": {"method": "raw"}})
    err, size = _saved_error(torch, mnist, net, cm, t)
    label = f"post-training prune {100 * sparsity:.0f}% + kmeans 5-bit, no retraining"
    row = [NET_TITLES[net], label, f"{float_err:.2f}", f"{err:.2f}",
           f"{err - float_err:+.2f}", f"{size:,}", f"{float_bytes / size:.1f}",
           f"{100 * (1 - sparsity):.0f}", "5", "", ""]
    return row, {"net": net, "schedule": label, "stage": "final", "kept": 1 - sparsity,
                 "error": err, "ratio": float_bytes / size}


RATIO_TICKS = [5, 7, 10, 15, 20, 30, 40, 50, 70, 100, 150, 200]
ERROR_TICKS = [0.5, 0.7, 0.8, 0.9, 1, 1.2, 1.5, 1.7, 2, 2.5, 3, 5, 10, 20, 30]
KEPT_TICKS = [100, 50, 30, 20, 10, 7, 5, 3]


def _log_axis(axis, ticks, lo: float, hi: float) -> None:
    """A log axis labelled with the plain numbers of ``ticks`` that fall in [lo, hi]."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def plot(points: list[dict], float_errors: dict[str, float], path: str) -> str | None:
    """Test error against compression ratio (top: every saved model, the stage before
    centroid fine-tuning joined to the final one) and against kept % over the prune rounds
    (bottom), one column per network; the top panels stop at 2.5x the float error.
    Returns the path, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    nets = list(float_errors)
    fig, axes = plt.subplots(2, len(nets), figsize=(7.5 * len(nets), 15), squeeze=False,
                             height_ratios=[1.6, 1])
    markers = "osD^vP<>Xh"
    for col, net in enumerate(nets):
        top, bottom = axes[0][col], axes[1][col]
        mine = [p for p in points if p["net"] == net]
        ceiling = 2.5 * float_errors[net]
        for i, label in enumerate(dict.fromkeys(p["schedule"] for p in mine)):
            pts = [p for p in mine if p["schedule"] == label]
            sized = [p for p in pts if p["ratio"] is not None]
            style = dict(marker=markers[i % len(markers)], alpha=0.85, label=label)
            # errors beyond the top of the panel (post-training pruning's collapse) are
            # drawn on its edge, with their value written beside them
            shown = [min(p["error"], ceiling) for p in sized]
            top.plot([p["ratio"] for p in sized], shown, "-", **style)
            for p in sized:
                if p["error"] > ceiling:
                    top.annotate(f"{p['error']:.1f}% (off the scale)", (p["ratio"], ceiling),
                                 textcoords="offset points", xytext=(6, -12), fontsize=8)
            rounds = [p for p in pts if p["ratio"] is None or p["stage"].startswith("share")]
            if len(rounds) > 2:
                bottom.plot([100 * p["kept"] for p in rounds], [p["error"] for p in rounds],
                            "-", **style)
        for method, pnet, f_err, err, ratio in PUBLISHED:
            if pnet == net:
                top.plot([ratio], [err], "*", markersize=15, markeredgecolor="black",
                         label=f"{method}: {err}% (its float: {f_err}%)")
        fe = float_errors[net]
        for ax in (top, bottom):
            ax.axhline(fe, color="gray", lw=0.8)
            ax.axhline(fe + 0.1, color="gray", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
        # log scales: post-training pruning lands at ~10-25x the float error
        ratios = [p["ratio"] for p in mine if p["ratio"]] + \
            [r for _, n, _, _, r in PUBLISHED if n == net]
        errors = [p["error"] for p in mine if p["error"] is not None]
        errors += [e for _, n, _, e, _ in PUBLISHED if n == net]
        low = min(errors + [fe]) / 1.1
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylim(low, ceiling * 1.05)
        _log_axis(top.xaxis, RATIO_TICKS, min(ratios) / 1.2, max(ratios) * 1.2)
        _log_axis(top.yaxis, ERROR_TICKS, low, ceiling * 1.05)
        top.set_xlabel("compression ratio (float32 bytes / .qpk bytes), log")
        top.set_ylabel("test error %, log (solid: float; dashed: float + 0.1 pt)")
        top.set_title(f"{NET_TITLES[net]}: every compressed model")
        top.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
        bottom.set_xscale("log")
        _log_axis(bottom.xaxis, KEPT_TICKS, 2, 100)
        bottom.invert_xaxis()
        bottom.set_xlabel("weights kept %, log (prune rounds + retraining, then sharing)")
        bottom.set_ylabel("test error %")
        bottom.set_title(f"{NET_TITLES[net]}: deep_compression stages")
        bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_data(quick: bool, mnist) -> tuple[dict, list[str]]:
    """The data set and the networks to run on it."""
    if quick:
        import numpy as np

        from qpack import demo

        demo.require_demo_extra()
        d = demo.load_digits_split()
        return ({"train_x": d.x_train, "train_y": d.y_train.astype(np.int64),
                 "test_x": d.x_test, "test_y": d.y_test.astype(np.int64)}, ["lenet300"])
    folder = os.environ.get("QPACK_MNIST_DIR")
    if not folder:
        raise ValueError("full mode needs MNIST: set QPACK_MNIST_DIR to the folder of the "
                         "four idx files (or run with --quick)")
    nets = [n for n in os.environ.get("QPACK_BENCH_TRAINED_NETS", "lenet300,lenet5")
            .split(",") if n]
    if not nets or set(nets) - set(NET_TITLES):
        raise ValueError(f"QPACK_BENCH_TRAINED_NETS must name some of {sorted(NET_TITLES)}")
    return mnist.load_mnist(folder), nets


def earlier_rows(nets: list[str]) -> tuple[list, list, dict, list[str]]:
    """Rows, points and float errors of the networks *not* in ``nets`` from the last full
    run's JSON (when only some networks are rerun), with a note saying so."""
    import json

    from harness import RESULTS_DIR

    path = os.path.join(RESULTS_DIR, "trained.json")
    others = [n for n in NET_TITLES if n not in nets]
    if not others or not os.path.exists(path):
        return [], [], {}, []
    with open(path) as fh:
        old = json.load(fh)
    titles = {NET_TITLES[n] for n in others}
    rows = [r for r in old["rows"] if r[0] in titles and not r[1].startswith("published")]
    points = [p for p in old.get("points", []) if p["net"] in others]
    float_errors = {n: float(r[2]) for n in others for r in rows
                    if r[0] == NET_TITLES[n] and r[1] == "float32 (trained here)"}
    note = (f"{', '.join(NET_TITLES[n] for n in others)}: rows from the run of "
            f"{old['date']} (only {', '.join(NET_TITLES[n] for n in nets)} rerun here).")
    return rows, points, float_errors, [note] if rows else []


def run(quick: bool = False) -> dict:
    """Every schedule on every network; the result table (see the module docstring)."""
    columns = ["network", "method / schedule", "float error %", "error %", "vs float (pt)",
               ".qpk bytes", "ratio", "kept % (per layer)", "bits", "seconds",
               "peak RSS MiB"]
    torch = optional_peer("torch")
    if torch is None:
        return {"title": "Trained compression (skipped: torch is not installed)",
                "columns": columns, "rows": [], "notes": ["torch is not installed"]}
    mnist = load_example("deep_compression_mnist")
    data, nets = load_data(quick, mnist)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows, points, float_errors = [], [], {}
    notes = [f"{'digits (8x8), LeNet-300-100 shape' if quick else 'real MNIST'}; "
             f"torch threads {torch.get_num_threads()}; seconds and peak RSS per schedule "
             "(process RSS sampled every 20 ms, float training excluded)."]
    for net in nets:
        t = mnist.as_tensors(torch, data)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            model = mnist.train_float(torch, net, t, quick)
        float_err = mnist.top1_error(torch, model, t)
        float_errors[net] = float_err
        float_bytes = sum(p.numel() * 4 for p in model.state_dict().values())
        rows.append([NET_TITLES[net], "float32 (trained here)", f"{float_err:.2f}",
                     f"{float_err:.2f}", "+0.00", f"{float_bytes:,}", "1.0", "100", "32",
                     f"{time.perf_counter() - t0:.0f}", f"{mem.peak / 2**20:.0f}"])
        row, point = post_training_prune_row(torch, mnist, net, model, t, float_err,
                                             float_bytes, 0.9 if quick else 0.92)
        rows.append(row)
        points.append(point)
        print(f"  {net}: float {float_err:.2f}% error", flush=True)
        r, p = recipe_rows(torch, mnist, net, model, t, float_err, float_bytes, quick)
        if net == "lenet300":
            rq, pq = qat_rows(torch, mnist, net, model, t, float_err, float_bytes, quick)
            r, p = r + rq, p + pq
        rows += r
        points += p
    if not quick:
        old_rows, old_points, old_errors, old_notes = earlier_rows(nets)
        rows, points = old_rows + rows, old_points + points
        float_errors = {**old_errors, **float_errors}
        notes += old_notes
        nets = [n for n in NET_TITLES if n in float_errors]
    for method, net, f_err, err, ratio in PUBLISHED:
        if net in nets:
            rows.append([NET_TITLES[net], f"published: {method}", f"{f_err:.2f}",
                         f"{err:.2f}", f"{err - f_err:+.2f}", "", f"{ratio}", "", "", "", ""])
    png = plot(points, float_errors,
               os.path.join(DOCS_DIR, f"trained{'_quick' if quick else ''}.png"))
    if png:
        notes.append(f"plot: {os.path.basename(png)} (error against ratio for every "
                     "schedule and stage; stars: published points)")
    return {"title": "Trained compression on MNIST (qpack.torch)", "columns": columns,
            "rows": rows, "notes": notes, "points": points}


def replot(quick: bool = False) -> str | None:
    """Redraw the PNG from the saved results JSON (no training); returns its path."""
    import json

    from harness import RESULTS_DIR

    suffix = "_quick" if quick else ""
    with open(os.path.join(RESULTS_DIR, f"trained{suffix}.json")) as fh:
        result = json.load(fh)
    float_errors = {n: float(r[2]) for n, title in NET_TITLES.items() for r in result["rows"]
                    if r[0] == title and r[1] == "float32 (trained here)"}
    return plot(result["points"], float_errors, os.path.join(DOCS_DIR,
                                                             f"trained{suffix}.png"))


if __name__ == "__main__":
    import sys

    # python benchmarks/bench_trained.py --replot [--quick]: the PNG from the saved JSON
    # (the run itself goes through benchmarks/run_all.py --only trained)
    if "--replot" in sys.argv:
        print(replot(quick="--quick" in sys.argv))
    else:
        sys.exit("run it with: python benchmarks/run_all.py --only trained [--quick]; "
                 "or --replot [--quick] to redraw the PNG from the saved JSON")
