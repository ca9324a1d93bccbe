"""`pix2pix-fast bench`: variant specs, the lever sweep, row order, and a run that
keeps its JSON up to date, records failures and goes on (toy model on the CPU)."""
import json
from dataclasses import fields

import pytest
import torch

from pix2pix_fast.bench import steps as bench
from pix2pix_fast.cli import build_parser, main
from pix2pix_fast.config import ConfigError, TrainConfig

TOY = dict(size=32, overrides={"ngf": 4, "ndf": 4}, steps=3, seconds=0.0, repeats=1, warmup=1, device="cpu",
           quiet=True)


def test_parse_variant_overrides_and_batches():
    v = bench.parse_variant("fast:compile=0,pad_channels=on,conv_impl=triton,lr=0.001@1/16")
    assert v.base == "fast"
    assert dict(v.overrides) == {"compile": False, "pad_channels": True, "conv_impl": "triton", "lr": 0.001}
    assert v.batch_sizes == (1, 16)
    assert bench.parse_variant("eager") == bench.Variant("eager", "eager")


@pytest.mark.parametrize("spec", ["nope", "fast:no_such_field=1", "fast:compile", "fast:compile=maybe",
                                  "fast:ngf=wide", "eager@x", "eager:batch_size=4"])
def test_parse_variant_rejects_bad_specs(spec):
    with pytest.raises(ConfigError):
        bench.parse_variant(spec)


def test_lever_sweep_flips_one_lever_at_a_time():
    base_spec, *flipped = bench.lever_sweep("fast:compile=0")
    base = TrainConfig().replace(**dict(bench.parse_variant(base_spec).overrides))
    names = [f.name for f in fields(TrainConfig)]
    changed_levers = []
    for spec in flipped:
        cfg = TrainConfig().replace(**dict(bench.parse_variant(spec).overrides))
        diff = [n for n in names if getattr(cfg, n) != getattr(base, n)]
        if "padding" in diff:
            assert cfg.padding == "reflect" and set(diff) <= {"padding", "fused_pad"}
            continue
        assert len(diff) == 1, (spec, diff)
        changed_levers += diff
    assert sorted(changed_levers) == sorted(lever for lever in bench.LEVERS if lever != "fused_pad")
    assert flipped[-2:] == ["fast:compile=0,padding=reflect,fused_pad=0", "fast:compile=0,padding=reflect,fused_pad=1"]


def test_expand_variants_in_place_without_duplicates():
    out = bench.expand_variants(["eager", "fast:compile=0", "levers", "eager@16"])
    sweep = bench.lever_sweep()
    assert out == ["eager"] + sweep + ["eager@16"]


def test_plan_orders():
    vs = [bench.parse_variant(s) for s in ("eager", "fast", "eager@16")]
    by_batch = [(v.spec, b) for v, b in bench._plan(vs, [1, 64], "batch")]
    assert by_batch == [("eager", 1), ("fast", 1), ("eager", 64), ("fast", 64), ("eager@16", 16)]
    by_variant = [(v.spec, b) for v, b in bench._plan(vs, [1, 64], "variant")]
    assert by_variant == [("eager", 1), ("eager", 64), ("fast", 1), ("fast", 64), ("eager@16", 16)]


def test_annotate_speedups_against_stock_rows_of_the_same_batch():
    def row(variant, base, batch, ms, **kw):
        return dict(variant=variant, base=base, batch=batch, size=256, netG="unet_256", ngf=64, ndf=64,
                    norm="instance", overrides=kw, status="ok", ms_per_step=ms)

    rows = [row("eager", "eager", 1, 20.0), row("graph_ref", "graph_ref", 1, 8.0), row("fast", "fast", 1, 4.0),
            row("eager", "eager", 64, 70.0), row("fast", "fast", 64, 35.0),
            row("eager:cudnn_benchmark=0", "eager", 1, 30.0, cudnn_benchmark=False)]
    bench.annotate(rows)
    fast1, fast64 = rows[2], rows[4]
    assert fast1["speedup_vs_eager"] == pytest.approx(20.0 / 4.0)
    assert fast1["speedup_vs_graph_ref"] == pytest.approx(8.0 / 4.0)
    assert fast1["best_stock"] == "graph_ref"
    assert fast64["speedup_vs_eager"] == pytest.approx(70.0 / 35.0)
    assert fast64["speedup_vs_graph_ref"] is None
    assert rows[5]["speedup_vs_eager"] == pytest.approx(20.0 / 30.0)  # an overridden eager row is not a reference


def test_run_writes_json_after_every_row_and_records_failures(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    real = bench.make_variant_step
    seen = []

    def make(base, cfg, device):
        if not cfg.dropout:
            raise RuntimeError("injected failure")
        return real(base, cfg, device)

    def on_row(row):
        data = json.loads(path.read_text())
        seen.append((len(data["rows"]), data["rows"][-1]["variant"], data["complete"]))

    monkeypatch.setattr(bench, "make_variant_step", make)
    rows = bench.run_bench(batch_sizes=[1], variants=["eager", "fast:dropout=0", "graph_ref", "fast:compile=0"],
                           json_path=str(path), on_row=on_row, **TOY)
    assert seen == [(1, "eager", False), (2, "fast:dropout=0", False), (3, "graph_ref", False),
                    (4, "fast:compile=0", False)]
    status = {r["variant"]: r["status"] for r in rows}
    assert status == {"eager": "ok", "fast:dropout=0": "error", "graph_ref": "skipped", "fast:compile=0": "ok"}
    assert "injected failure" in rows[1]["error"]
    assert rows[2]["reason"] == "no CUDA"
    data = json.loads(path.read_text())
    assert data["complete"] is True and len(data["rows"]) == 4
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    for r in ok:
        assert r["ms_per_step"] > 0 and r["img_per_s"] == pytest.approx(1e3 / r["ms_per_step"])
        assert r["gflop_per_img"] > 0 and r["speedup_vs_eager"] is not None


def test_interrupted_run_keeps_measured_rows(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    real = bench.bench_row
    calls = []

    def row_then_interrupt(v, cfg, device, **kw):
        calls.append(v.spec)
        if len(calls) == 2:
            raise KeyboardInterrupt("signal 15")
        return real(v, cfg, device, **kw)

    monkeypatch.setattr(bench, "bench_row", row_then_interrupt)
    rows = bench.run_bench(batch_sizes=[1], variants=["eager", "eager:cudnn_benchmark=0", "eager@2"],
                           json_path=str(path), **TOY)
    data = json.loads(path.read_text())
    assert [r["variant"] for r in data["rows"]] == ["eager"] == [r["variant"] for r in rows]
    assert data["complete"] is False and data["interrupted"] == "signal 15"


def test_row_runs_under_its_cudnn_benchmark_setting_and_restores_it(monkeypatch):
    flags = []

    def make(base, cfg, device):
        flags.append(torch.backends.cudnn.benchmark)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "make_variant_step", make)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    bench.run_bench(batch_sizes=[1], variants=["eager", "eager:cudnn_benchmark=0", "fast:cudnn_benchmark=1"], **TOY)
    assert flags == [True, False, True]
    assert torch.backends.cudnn.benchmark is False


def test_cli_bench_flags_reach_the_run(tmp_path):
    args = build_parser().parse_args(["bench", "--variant", "eager", "--variant", "levers", "--order", "variant",
                                      "--batch-sizes", "1,64", "--seconds", "0.2", "--sweep-base", "fast",
                                      "--json", "x.json"])
    assert args.variant == ["eager", "levers"] and args.order == "variant" and args.batch_sizes == [1, 64]
    path = tmp_path / "b.json"
    rc = main(["bench", "--device", "cpu", "--size", "32", "--ngf", "4", "--ndf", "4", "--batch-sizes", "1",
               "--variant", "eager", "--variant", "fast", "--runtimes", "eager", "--steps", "1", "--repeats", "2",
               "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert [(r["kind"], r["variant"], r["status"], r["ngf"], r["size"]) for r in data["rows"]] == [
        ("train", "eager", "ok", 4, 32), ("train", "fast", "ok", 4, 32), ("inference", "eager", "ok", 4, 32)]
    assert data["complete"] and data["env"]["cpu_count"] and data["env"]["torch"]
    assert all(len(r["runs_ms"]) == 2 and r["speedup_vs_eager"] > 0 for r in data["rows"])
    # --suite gpu: the training-step variants on the CPU (the GPU check's dry run), not the CPU suite.
    rc = main(["bench", "--device", "cpu", "--suite", "gpu", "--size", "32", "--ngf", "4", "--ndf", "4",
               "--batch-sizes", "1", "--variant", "eager", "--steps", "1", "--repeats", "1", "--warmup", "0",
               "--json", str(path)])
    assert rc == 0
    rows = json.loads(path.read_text())["rows"]
    assert [(r["variant"], r["status"], "kind" in r) for r in rows] == [("eager", "ok", False)]


def test_cli_bench_bad_variant_is_one_line_error(capsys):
    assert main(["bench", "--device", "cpu", "--variant", "fast:warp=9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pix2pix-fast: error: bench variant 'fast:warp=9'") and "\n" not in err


def test_rows_that_train_the_same_models_reuse_them_and_their_compiled_graphs(monkeypatch):
    """A compiled configuration compiles once per process: the next row with the same models (only
    cuda_graph / cudnn_benchmark flipped, same batch) gets them back at their initial weights without
    a torch.compile reset; any other row rebuilds and resets."""
    import torch._dynamo

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    rows = bench.run_bench(batch_sizes=[1], variants=["fast:compile=0", "fast:compile=0,cuda_graph=0",
                                                      "fast:compile=0,cudnn_benchmark=0", "fast:compile=0@2",
                                                      "fast:compile=0,pad_channels=1@2"], order="variant", **TOY)
    assert [(r["variant"], r["batch"], r["status"], r["models"]) for r in rows] == [
        ("fast:compile=0", 1, "ok", "built"), ("fast:compile=0,cuda_graph=0", 1, "ok", "reused"),
        ("fast:compile=0,cudnn_benchmark=0", 1, "ok", "reused"), ("fast:compile=0@2", 2, "ok", "built"),
        ("fast:compile=0,pad_channels=1@2", 2, "ok", "built")]
    assert len(resets) == 3  # before each rebuild, and when the run ends

    reuse = bench.ModelReuse()
    cfg = bench.bench_config(32, 1, ngf=4, ndf=4)
    (G, D), reused = reuse.get("fast", cfg, torch.device("cpu"))
    initial = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        next(G.parameters()).add_(1.0)  # a row trains them
    (G2, D2), reused = reuse.get("fast", cfg.replace(cuda_graph=False), torch.device("cpu"))
    assert reused and G2 is G and D2 is D
    assert all(torch.equal(v, initial[k]) for k, v in G.state_dict().items())
    (G3, _), reused = reuse.get("fast", cfg.replace(batch_size=2), torch.device("cpu"))
    assert not reused and G3 is not G
    reuse.clear(torch.device("cpu"))
