"""Inference precision follows the hardware as well as the checkpoint: never emulated bf16 on
a CPU, dynamic int8 where it is the fast substitute, and what each choice does to predictions."""

from pathlib import Path

import pytest
import torch

import infer.predict as predict
import infer.cpu as device_module
import infer.precision as precision_module
from infer import Classifier
from infer.predict import OptionError, choose_precision
from tests.conftest import run_cli, run_module
from infer.images import expand_paths

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def avx2(monkeypatch):
    """A CPU without bf16 instructions (no AMX, no AVX512-BF16): bf16 would be emulated."""
    monkeypatch.setattr(device_module, "cpu_has_amx_bf16", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_avx512_bf16", lambda: False)


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_amx_bf16", lambda: True)


@pytest.fixture(scope="module")
def gpu_trained(tiny_run, tmp_path_factory):
    """The tiny run's checkpoint as a GPU run writes it: evaluated in bf16."""
    card = torch.load(tiny_run["out"] / "vit_cifar10_finetuned.pth", weights_only=True)
    path = tmp_path_factory.mktemp("gpu") / "vit_cifar10_finetuned.pth"
    torch.save({**card, "eval_amp": "bf16"}, path)
    return path


def test_a_gpu_trained_checkpoint_never_runs_emulated_bf16_nor_unchecked_int8(avx2, monkeypatch):
    chosen = choose_precision(CPU, trained="bf16")
    assert chosen.name == "fp32" and "emulates bf16" in chosen.note  # AVX2: bf16 emulated, int8 never unchecked
    assert choose_precision(CPU, trained="fp16").name == "fp32"
    assert choose_precision(CPU, trained="bf16", amp="bf16").name == "bf16"  # asked for explicitly
    assert choose_precision(CPU, trained="bf16", quantize="int8").name == "int8"
    monkeypatch.setattr(device_module, "cpu_has_avx512_bf16", lambda: True)  # AVX512-BF16: native bf16
    assert choose_precision(CPU, trained="bf16") == predict.Precision("bf16")
    assert precision_module.cpu_precisions() == ["int8-bf16", "bf16", "fp32"]


def test_training_precision_is_kept_where_the_hardware_has_it(amx):
    assert precision_module.cpu_precisions() == ["int8-bf16", "bf16", "fp32"]  # int8 tiles too, measured faster
    assert choose_precision(CPU, trained="bf16") == predict.Precision("bf16")  # AMX: native, no note
    assert choose_precision(CPU, trained="none") == predict.Precision("fp32")  # a CPU-trained model
    assert choose_precision(CUDA, trained="bf16") == predict.Precision("bf16")
    assert choose_precision(CPU, trained="none", quantize="int8").name == "int8"  # asked for
    with pytest.raises(OptionError, match="CPU only"):
        choose_precision(CUDA, trained="bf16", quantize="int8")
    with pytest.raises(OptionError, match="exclude each other"):
        choose_precision(CPU, trained="bf16", amp="bf16", quantize="int8")


def test_amx_detection_honours_the_capability_caps(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert device_module.cpu_has_amx_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not device_module.cpu_has_amx_bf16()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not device_module.cpu_has_amx_bf16()
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not device_module.cpu_has_amx_bf16()


@pytest.mark.long
def test_int8_classifier_runs_the_pt2e_int8_package_and_agrees_with_fp32(gpu_trained, tiny_run, tmp_path,
                                                                         monkeypatch):
    """--quantize int8: the one int8 path, PT2E's (infer/compiled.py), built once and kept."""
    from infer import compiled

    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    int8 = Classifier(gpu_trained, device="cpu", quantize="int8")
    fp32 = Classifier(gpu_trained, device="cpu", quantize="none")
    assert int8.precision.name == "int8" and int8.precision.compiled and fp32.precision.name == "fp32"
    assert isinstance(int8.model, compiled.CompiledModel) and not isinstance(fp32.model, compiled.CompiledModel)
    (package,) = (tmp_path / "cache").rglob("*-int8-*.pt2")
    built = package.stat().st_mtime_ns
    assert Classifier(gpu_trained, device="cpu", quantize="int8").precision.name == "int8"
    assert package.stat().st_mtime_ns == built  # kept: built once
    paths = expand_paths([tiny_run["data"] / "test"])
    a, b = list(int8.classify(paths)), list(fp32.classify(paths))
    agreement = sum(x.top[0][0] == y.top[0][0] for x, y in zip(a, b)) / len(paths)
    assert agreement >= 0.95, agreement
    differences = [abs(x.top[0][1] - y.top[0][1]) for x, y in zip(a, b)]
    assert max(differences) < 0.05 and max(differences) > 0  # int8's numbers, close to fp32's


def test_amx_runs_the_checkpoint_in_bf16(gpu_trained, amx):
    classifier = Classifier(gpu_trained, device="cpu")
    assert classifier.precision.name == "bf16" and classifier.precision.autocast_dtype == torch.bfloat16


def test_cli_says_once_in_one_line_when_it_overrides_the_checkpoint(gpu_trained, tiny_run):
    """A real subprocess on this machine with its capability capped at AVX2, as on a CPU
    without bf16 instructions: the note, once, then the predictions."""
    images = [str(p) for p in expand_paths([tiny_run["data"] / "test" / "cat"])[:5]]
    result = run_module("-m", "infer", "--checkpoint", str(gpu_trained), "--image", *images,
                        env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "note: fp32 instead of training's bf16: this CPU emulates bf16, several times slower"]
    assert len(result.stdout.strip().splitlines()) == 5
    cpu_trained = run_module("-m", "infer", "--checkpoint", str(tiny_run["out"] / "vit_cifar10_finetuned.pth"),
                             "--image", *images, env={"ATEN_CPU_CAPABILITY": "avx2"})
    assert cpu_trained.returncode == 0 and cpu_trained.stderr == ""  # fp32 as trained: nothing to say


@pytest.mark.long
def test_prepare_takes_the_fastest_precision_that_agrees_on_the_images_and_later_runs_load_it(
        tiny_run, tmp_path, monkeypatch, capsys):
    """`infer --prepare --data` compiles the checkpoint for this CPU (PT2E int8, Inductor,
    AOTInductor: infer/compiled.py) at the fastest precision whose predictions agree with fp32 on
    >= 99% of the images, keeps the verdict, and later runs load it. Where none agrees, it runs
    eagerly in fp32; a job past AUTO_BUILD_IMAGES prepares by itself; a new file is prepared anew."""
    from infer import cache, compiled, runtimes
    from infer.predict import Classifier
    from infer.precision import cpu_precisions

    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    test = tiny_run["data"] / "test"
    assert cache.read_verdict(checkpoint) is None
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--data", str(test))
    assert result.returncode == 0, result.stderr
    verdict = cache.read_verdict(checkpoint)
    rates, calls = verdict["img_per_s"], verdict["close_calls"]
    assert verdict["checked_on"] == 300  # every candidate built and timed here, and fp32 as trained, eagerly:
    assert set(rates) == {"fp32 (eager)", *cpu_precisions(), *runtimes.available()} - set(verdict["skipped"])
    assert all(r > 0 for r in rates.values()) and "ort-fp32" in rates  # (ONNX Runtime: the test extra's)

    # close calls are decided at training's precision's faster rate: eagerly, or fp32 compiled once it
    # decided the check's close calls as fp32 eagerly did (where not, said, and eagerly)
    decided_at = max(rates["fp32 (eager)"], rates["fp32"])
    if "fp32 for close calls" in verdict["skipped"]:
        decided_at = rates["fp32 (eager)"]
    assert (verdict["exact_package"] is not None) == (verdict["guard"] > 0 and verdict["precision"] != "fp32"
                                                      and decided_at > rates["fp32 (eager)"])

    def effective(name):  # img/s with its close calls run again in fp32
        return 1 / (1 / rates[name] + calls[name]["share"] / decided_at)
    chosen = effective(verdict["precision"]) if verdict["package"] else rates["fp32 (eager)"]
    for name, rate in rates.items():  # each one faster than the choice was checked, and failed or lost
        if name != verdict["precision"] and rate > chosen:
            assert calls[name] is None or effective(name) <= chosen
    # the rest were checked too, unless no faster than the choice (a check could not change it)
    assert set(calls) | set(verdict["unchecked"]) == set(rates) - {"fp32 (eager)"}
    assert all(rates[name] <= chosen for name in verdict["unchecked"])
    if verdict["package"] is not None:
        assert calls[verdict["precision"]]["agreement"] >= precision_module.AGREEMENT
        assert verdict["guard"] == calls[verdict["precision"]]["gap"]
    assert result.stdout.startswith("prepared in ") and "img/s here: fp32 (eager) " in result.stdout
    if verdict["second"] is not None:  # a second opinion: faster than fp32 on the close calls, and faster in all
        second = verdict["second_calls"]
        assert rates[verdict["second"]] > decided_at and second["agreement"] >= precision_module.AGREEMENT
        assert 1 / (1 / rates[verdict["precision"]] + calls[verdict["precision"]]["share"] / rates[verdict["second"]]
                    + second["share"] / decided_at) > effective(verdict["precision"])
    kept = {verdict["package"], verdict["exact_package"], verdict["second_package"]}
    assert not [p for p in (tmp_path / "cache").rglob("*.pt2") if p.name not in kept]  # the rest removed
    fp32 = Classifier(checkpoint, device="cpu", quantize="none")
    paths = sorted(test.glob("*/*.jpg"))
    if verdict["package"] is not None:  # a faster precision agreed: later runs load its package
        fast = Classifier(checkpoint, device="cpu")
        assert fast.precision.compiled and fast.precision.name == verdict["precision"]
        kind = runtimes.RuntimeModel if verdict["precision"] in runtimes.RUNTIMES else compiled.CompiledModel
        assert isinstance(fast.model.fast if verdict["guard"] else fast.model, kind)
        same = [a.top[0][0] == b.top[0][0] for a, b in zip(fast.classify(paths), fp32.classify(paths))]
        # (a near-tie may round apart between the check's batches and classify's)
        assert sum(same) / len(same) == pytest.approx(calls[verdict["precision"]]["agreement"], abs=0.01)
        result = run_cli("infer", "--checkpoint", str(checkpoint), "--data", str(test))
        assert f"(in {verdict['precision']}, {predict.how_it_runs(verdict['precision'])}" in result.stdout
        expected = fp32.classify(paths, topk=3)

        def fp32s_answers(classifier):  # every image a close call (guard 1e9): fp32's answers, each one
            for a, b in zip(classifier.classify(paths, topk=3), expected):
                assert [c for c, _ in a.top] == [c for c, _ in b.top]
                assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)
        cache.write_verdict(checkpoint, {**verdict, "guard": 1e9, "exact_package": None})  # decided eagerly
        guarded = Classifier(checkpoint, device="cpu")
        assert isinstance(guarded.model, compiled.CloseCalls) and guarded.exact_model is None  # loaded when needed
        fp32s_answers(guarded)
        assert guarded.exact_model is not None and guarded.exact() is guarded.exact_model  # read once
        exact = verdict["exact_package"]  # decided by fp32 compiled: the verdict's package, or one built here
        if exact is None:
            exact = cache.new_package_path(checkpoint, "fp32").name
            compiled.build(fp32.model, fp32.card.img_size, "fp32", cache.private_dir() / exact)
        cache.write_verdict(checkpoint, {**verdict, "guard": 1e9, "exact_package": exact})
        guarded = Classifier(checkpoint, device="cpu")
        assert verdict["precision"] == "fp32" or "in fp32, compiled, checked" in guarded.precision.note
        fp32s_answers(guarded)
        assert isinstance(guarded.exact_decider, compiled.CompiledModel) and guarded.exact_model is None
        (cache.private_dir() / "broken.pt2").write_bytes(b"PK\x03\x04 a broken build")  # (its hash its own)
        cache.write_verdict(checkpoint, {**verdict, "guard": 1e9, "exact_package": "broken.pt2"})
        guarded = Classifier(checkpoint, device="cpu")
        fp32s_answers(guarded)  # an optional speed-up never stops a job: eagerly, said once
        assert guarded.exact_model is not None and capsys.readouterr().err.count("close calls run eagerly") == 1
        # a second opinion (here the verdict's own package) on every close call: its answers where its own
        # gap is 0, fp32's where every one of its own is close too; training's alone where it will not load
        opinion = {**verdict, "guard": 1e9, "exact_package": None, "second": verdict["precision"],
                   "second_package": verdict["package"], "second_guard": 0.0}
        cache.write_verdict(checkpoint, opinion)
        guarded = Classifier(checkpoint, device="cpu")
        assert f"in {verdict['precision']}, and its own (within 0.0) in fp32" in guarded.precision.note
        assert [p.top[0][0] for p in guarded.classify(paths)] == [p.top[0][0] for p in fast.classify(paths)]
        assert guarded.exact_model is None  # (its own gap 0: fp32 never asked)
        cache.write_verdict(checkpoint, {**opinion, "second_guard": 1e9})
        fp32s_answers(Classifier(checkpoint, device="cpu"))
        broken = f"broken{cache.package_suffix(verdict['precision'])}"  # (a runtime's: an .onnx file)
        (cache.private_dir() / broken).write_bytes(b"PK\x03\x04 a broken build")
        cache.write_verdict(checkpoint, {**opinion, "second_guard": 1e9, "second_package": broken})
        fp32s_answers(Classifier(checkpoint, device="cpu"))
        assert capsys.readouterr().err.count("their second opinion cannot be loaded") == 1
        cache.write_verdict(checkpoint, verdict)
    assert run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--data", str(test)).stdout.startswith(
        "prepared in 0 s")  # kept: checked once

    monkeypatch.setattr(precision_module, "AGREEMENT", 1.01)  # nothing can agree enough: fp32, eagerly, said so
    copy = tmp_path / "copy.pth"
    copy.write_bytes(checkpoint.read_bytes())
    monkeypatch.setattr("infer.__main__.AUTO_BUILD_IMAGES", 100)  # a long job prepares by itself
    result = run_cli("infer", "--checkpoint", str(copy), "--data", str(test))
    assert result.returncode == 0 and "compiling" in result.stderr and "(in fp32;" in result.stdout
    assert cache.read_verdict(copy)["precision"] == "fp32" and cache.read_verdict(copy)["package"] is None
    assert Classifier(copy, device="cpu").precision == predict.Precision("fp32")
    assert run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--quantize", "none",
                   "--data", str(test)).returncode == 2


def test_close_calls_takes_the_smallest_gap_that_restores_agreement():
    """Of 100 images a lower precision swapped the top two classes of 3, each with its top two
    logits 0.15 apart; 7 more lie 0.05 apart, unswapped. Re-running the images closer than 0.1
    would leave the 3 swapped (97%); closer than 0.151-0.152 catches them: 100%, 10% of the images re-run."""
    reference = torch.zeros(100, dtype=torch.long)  # training's answer: class 0 for every image
    logits = torch.zeros(100, 10)
    logits[:, 0] = 2.0  # far ahead of class 1 ...
    logits[:3, 0], logits[:3, 1] = 0.0, 0.15  # ... except 3 swapped,
    logits[3:10, 0] = 0.05  # and 7 close, not swapped
    calls = precision_module.close_calls(logits.softmax(dim=1), reference)
    assert calls == {"gap": pytest.approx(0.1515, abs=6e-4), "share": pytest.approx(0.10),
                     "agreement": pytest.approx(1.0)}
    logits[:3, 1] = 0.12  # the swaps narrower: so is the gap (0.001-0.002 above the widest)
    assert precision_module.close_calls(logits.softmax(dim=1), reference)["gap"] == pytest.approx(0.1215, abs=6e-4)
    logits[:3, 1] = 5.0  # swapped by far more than MAX_GAP: no gap restores 99%
    assert precision_module.close_calls(logits.softmax(dim=1), reference) is None
    logits[:3, 1] = 200.0  # so far that class 0's probability underflows to 0 (an infinite gap): the same answer
    assert precision_module.close_calls(logits.softmax(dim=1), reference) is None


def test_a_second_opinion_takes_the_close_calls_and_leaves_training_only_its_own():
    """1,000 images, 6 changed answers allowed (99% by the check's bound). The chosen path changed
    12, all within its gap of 0.1 (100 close calls), none outside. A second opinion on those 100
    changed 12 too, by 0.01, 0.02, ..., 0.12: the 6 widest may stay, so its own gap reaches just past
    0.06, and the 6 swapped and 2 close within it (0.8% of all images) go to training's precision."""
    reference = torch.zeros(1000, dtype=torch.long)
    found = torch.zeros(1000, 10)
    found[:, 0] = 3.0
    found[:100, 1] = 2.95  # 100 close calls (gap 0.05), 12 of them swapped:
    found[:12, 1] = 3.05
    second = torch.zeros(100, 10)
    second[:, 0] = 2.0
    second[:12, 1] = 2.0 + 0.01 * torch.arange(1, 13)  # 12 swapped, by 0.01 to 0.12
    second[12:14, 1] = 1.995  # and 2 close, unswapped
    calls = precision_module.second_opinion(found.softmax(dim=1), 0.1, second.softmax(dim=1), reference)
    assert calls["gap"] == pytest.approx(0.0615, abs=6e-4) and calls["share"] == pytest.approx(0.008)
    assert calls["agreement"] == pytest.approx(0.994)
    plain = precision_module.Measured("int8", 20.0, {"gap": 0.1, "share": 0.1, "agreement": 1.0})
    assert precision_module.effective_rate(plain, 5.0, (12.0, calls)) == pytest.approx(
        1 / (1 / 20 + 0.1 / 12 + 0.008 / 5))
    found[500:507, 1] = 9.0  # 7 more changed, far outside the gap: past what the bound allows, no second helps
    assert precision_module.second_opinion(found.softmax(dim=1), 0.1, second.softmax(dim=1), reference) is None


def test_prepare_keeps_the_fastest_second_opinion_and_none_that_would_slow_the_close_calls(monkeypatch):
    """Each candidate faster than training's precision runs on the chosen's close calls; the
    cascade kept is the fastest, and only where it beats training's precision deciding them all."""
    from infer import prepare

    reference = torch.zeros(1000, dtype=torch.long)
    found = torch.zeros(1000, 3)
    found[:, 0] = 3.0
    found[:100, 1] = 2.95  # 100 close calls, fp32 to decide them
    images = [torch.full((1, 3, 4, 4), float(i)) for i in range(1000)]
    asked = {}

    def load(path, name, img_size):  # "c" agrees far from any tie; "b" swaps every answer, within 0.01
        def run(batch):
            asked.setdefault(name, []).extend(int(i) for i in batch[:, 0, 0, 0])
            logits = torch.zeros(len(batch), 3)
            logits[:, 0 if name == "c" else 1] = 5.0 if name == "c" else 0.01  # (b: wrong, every one close)
            return logits
        return run

    monkeypatch.setattr(prepare, "load", load)
    chosen = precision_module.Measured("a", 30.0, {"gap": 0.1, "share": 0.1, "agreement": 1.0})
    verdict = {"img_per_s": {"a": 30.0, "b": 20.0, "c": 8.0, "slow": 4.0}}
    packages = {name: Path(f"{name}.pt2") for name in verdict["img_per_s"]}
    card = type("Card", (), {"img_size": 4})
    prepare.find_second_opinion(chosen, found.softmax(dim=1), 5.0, ["a", "b", "c", "slow"], verdict, packages,
                                card, images, reference)
    assert set(asked) == {"b", "c"} and asked["c"] == list(range(100))  # (not the chosen, nor one slower than fp32)
    assert verdict["second"] == "c" and verdict["second_package"] == "c.pt2" and verdict["second_guard"] == 0.0
    tried = verdict["second_opinions"]  # each one tried, recorded: b's cascade sends all 100 on, c's none
    assert set(tried) == {"b", "c"} and tried["b"]["share"] == pytest.approx(0.1) and tried["c"]["share"] == 0
    assert tried["c"]["img_per_s"] == pytest.approx(1 / (1 / 30 + 0.1 / 8))
    assert tried["b"]["img_per_s"] == pytest.approx(1 / (1 / 30 + 0.1 / 20 + 0.1 / 5))
    verdict = {"img_per_s": {"a": 30.0, "b": 20.0, "c": 5.5}}  # c barely faster than fp32: b's all-close cascade loses
    prepare.find_second_opinion(chosen, found.softmax(dim=1), 5.0, ["a", "b", "c"], verdict, packages, card,
                                images, reference)
    assert verdict["second"] == "c"
    verdict = {"img_per_s": {"a": 30.0, "b": 20.0}}  # b alone sends every close call on to fp32: slower, not kept
    prepare.find_second_opinion(chosen, found.softmax(dim=1), 5.0, ["a", "b"], verdict, packages, card, images,
                                reference)
    assert "second" not in verdict


def test_fp32_compiled_decides_close_calls_only_where_it_gave_fp32s_answer_on_each_one(monkeypatch):
    """Before the package compiled in training's precision decides close calls, it is run on the
    check's close calls (the images whose top two lie within the gap) and must give training's
    answer on every one; one changed answer, and they are decided eagerly."""
    from infer import prepare

    reference = torch.zeros(6, dtype=torch.long)  # training's answers: class 0
    found = torch.tensor([[2.0, 0.0], [0.5, 0.48], [3.0, 0.0], [0.49, 0.5], [2.5, 0.0], [1.0, 0.0]]).softmax(dim=1)
    images = [torch.full((1, 3, 4, 4), float(i)) for i in range(6)]  # image i: pixels i
    asked = []

    def package(wrong: set):  # class 1 for the images in `wrong`, class 0 elsewhere
        def run(batch):
            asked.extend(int(i) for i in batch[:, 0, 0, 0])
            return torch.stack([torch.tensor([0.0, 1.0] if int(i) in wrong else [1.0, 0.0]) for i in batch[:, 0, 0, 0]])
        return lambda path, name, img_size: run

    monkeypatch.setattr(prepare, "load", package(wrong={0, 2}))  # wrong only where the call was not close
    assert prepare.decides_close_calls(Path("fp32.pt2"), "fp32", 4, images, found, 0.1, reference)
    assert asked == [1, 3]  # the close calls alone were run
    monkeypatch.setattr(prepare, "load", package(wrong={3}))
    assert not prepare.decides_close_calls(Path("fp32.pt2"), "fp32", 4, images, found, 0.1, reference)


def test_the_check_asks_for_agreement_that_holds_beyond_the_images_it_saw():
    """99.0% measured on 1,000 images is not taken as 99%: on images the check did not see it
    would fall below about half the time. 99.5% is (Wilson's bound one standard error down: 99.2%);
    on 100 images only 100% is."""
    reference = torch.zeros(1000, dtype=torch.long)
    for swapped, kept in ((10, False), (5, True)):
        logits = torch.zeros(1000, 10)
        logits[:, 0] = 2.0
        logits[:swapped, 1] = 5.0  # swapped far beyond any gap
        calls = precision_module.close_calls(logits.softmax(dim=1), reference)
        assert (calls is not None) == kept and (not kept or calls["agreement"] == pytest.approx(0.995))
    assert precision_module.lower_bound(1.0, 100) >= precision_module.AGREEMENT > precision_module.lower_bound(0.99, 100)
    assert precision_module.lower_bound(0.995, 1000) == pytest.approx(0.9922, abs=1e-4)


def test_close_calls_are_classified_again_by_the_exact_model_asked_for_on_the_first():
    from infer.compiled import CloseCalls

    class Fast:
        batch_size = 16

        def __call__(self, images):  # logits whose top two lie images[:, 0] apart
            logits = torch.zeros(len(images), 3)
            logits[:, 0] = images[:, 0]
            return logits

    asked, seen = [], []

    def exact():  # Classifier.exact: the model as trained, read from the checkpoint when first asked for
        asked.append(1)
        return lambda images: (seen.append(images[:, 0].tolist()), torch.full((len(images), 3), -1.0))[1]

    model = CloseCalls(Fast(), 0.1, exact)
    assert model.batch_size == 16
    far = torch.tensor([[1.0], [2.0]])
    assert torch.equal(model(far), Fast()(far)) and not asked  # no close call: the exact model is not read
    mixed = torch.tensor([[1.0], [0.05], [3.0], [0.0]])
    out = model(mixed)
    assert seen == [pytest.approx([0.05, 0.0])] and len(asked) == 1  # only the close rows, in order, one batch
    assert torch.equal(out[[1, 3]], torch.full((2, 3), -1.0)) and torch.equal(out[[0, 2]], Fast()(mixed)[[0, 2]])


def test_close_calls_are_gathered_across_batches_and_decided_in_full_batches(tiny_run):
    """A job's close calls wait for CLOSE_BATCH of them (across batches of 4 here), and the exact
    model decides them together; predictions come out in input order, each the exact model's where
    it was a close call, the fast one's elsewhere, an unreadable image's error in its place."""
    from infer.compiled import CLOSE_BATCH, CloseCalls

    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    exact = Classifier(checkpoint, device="cpu", quantize="none", batch_size=4)
    paths = sorted((tiny_run["data"] / "test").glob("*/*.jpg"))[:60]
    paths.insert(21, tiny_run["data"] / "missing.jpg")
    truth = exact.classify(paths, topk=2)
    model, sizes, tied_count = exact.model, [], []

    def fast(images):  # the exact model's logits, made a close call (top two tied) for every third image
        logits = model(images).float()
        top = logits.topk(2, dim=1)
        tied = torch.arange(len(images)) % 3 == 0
        logits[tied, top.indices[tied, 0]] = top.values[tied, 1]
        tied_count.append(int(tied.sum()))
        return logits

    def decide(images):
        sizes.append(len(images))
        return model(images)

    fast.batch_size = 4
    guarded = Classifier(checkpoint, device="cpu", quantize="none", batch_size=4)
    guarded.model = CloseCalls(fast, 1e-6, lambda: decide)
    predictions = guarded.classify(paths, topk=2)
    assert [p.path for p in predictions] == [str(p) for p in paths] and predictions[21].error
    for a, b in zip(predictions, truth):
        assert a.error == b.error and (a.error or [c for c, _ in a.top] == [c for c, _ in b.top])
    assert sum(sizes) == sum(tied_count) > CLOSE_BATCH  # every close call decided once, by the exact model
    # ...in full batches: one short batch where the unreadable image settles the queue, one at the end
    assert sizes.count(CLOSE_BATCH) >= len(sizes) - 2 and len(sizes) < len(tied_count)


def test_a_second_opinions_own_close_calls_are_gathered_in_turn(tiny_run):
    """In a cascade, the close calls go to the second opinion in full batches, and its own close
    calls (every other one here) wait, gathered, for the exact model; every answer is the exact
    model's where the second was close, the second's where only the fast one was."""
    from infer.compiled import CLOSE_BATCH, CloseCalls

    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    exact = Classifier(checkpoint, device="cpu", quantize="none", batch_size=4)
    paths = sorted((tiny_run["data"] / "test").glob("*/*.jpg"))[:120]
    truth = exact.classify(paths, topk=2)
    model, sizes = exact.model, {"second": [], "exact": []}

    def tie(logits, every):  # the top two tied in every `every`-th row
        top, tied = logits.topk(2, dim=1), torch.arange(len(logits)) % every == 0
        logits[tied, top.indices[tied, 0]] = top.values[tied, 1]
        return logits

    def fast(images):
        return tie(model(images).float(), 2)

    def second(images):  # wrong wherever it is not close: its answer must not be taken there, so
        sizes["second"].append(len(images))  # only a tie sends the right answer on
        return tie(model(images).float(), 1)

    def decide(images):
        sizes["exact"].append(len(images))
        return model(images)

    fast.batch_size = second.batch_size = 4
    opinion = CloseCalls(second, 1e-6, lambda: decide)
    guarded = Classifier(checkpoint, device="cpu", quantize="none", batch_size=4)
    guarded.model = CloseCalls(fast, 1e-6, lambda: opinion)
    predictions = guarded.classify(paths, topk=2)
    for a, b in zip(predictions, truth):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
    assert sum(sizes["second"]) == 60 and sum(sizes["exact"]) == 60  # each close call once at each step
    for step in sizes.values():  # in full batches, but for the last
        assert step.count(CLOSE_BATCH) == len(step) - 1


@pytest.mark.parametrize("name", ["ort-fp32", "ort-int8"])
def test_another_runtime_runs_the_checkpoints_own_export_behind_the_same_verdict(name, tiny_run, tmp_path, monkeypatch):
    """A runtime candidate (infer/runtimes.py) builds the checkpoint's ONNX export (int8 for
    ort-int8), computes the model's logits (fp32: to float rounding; int8: the same answers nearly
    always), and a verdict naming it loads it, its file checked as a
    package is, its note naming the runtime."""
    from infer import cache, prepare, runtimes

    if name not in runtimes.available():
        pytest.skip(f"{runtimes.RUNTIMES[name]} is not installed (pip install -e \".[onnx]\")")
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    exact = Classifier(checkpoint, device="cpu", quantize="none")
    paths = sorted((tiny_run["data"] / "test").glob("*/*.jpg"))[:48]
    inputs = torch.cat([item for _, item in exact.read_all(paths)])
    path = cache.new_package_path(checkpoint, name)
    model = prepare.build(exact.model, exact.card, name, path)
    assert path.suffix == ".onnx" and isinstance(model, runtimes.RuntimeModel) and model.batch_size == 16
    with torch.no_grad():
        ours, theirs = exact.model(inputs), model(inputs)
    assert theirs.shape == ours.shape and theirs.dtype == torch.float32
    if name == "ort-fp32":
        assert (theirs - ours).abs().max() < 1e-4
    else:  # built from the export that prepare built for ort-fp32: the same file as from a new export
        exported = cache.new_package_path(checkpoint, "ort-fp32")
        prepare.build(exact.model, exact.card, "ort-fp32", exported)
        again = prepare.build(exact.model, exact.card, name, path.with_name("again.onnx"), {"ort-fp32": exported})
        assert torch.equal(again(inputs), theirs)
    assert (theirs.argmax(1) == ours.argmax(1)).float().mean() >= 0.9
    verdict = {"precision": name, "package": path.name, "guard": 0.0, "agreement": {name: 1.0}, "close_calls": {},
               "img_per_s": {name: 1.0}, "checked_on": 48, "card": exact.card.to_dict(), "img_size": 32,
               "batch_size": 16}
    cache.write_verdict(checkpoint, verdict)
    fast = Classifier(checkpoint, device="cpu")
    assert isinstance(fast.model, runtimes.RuntimeModel) and fast.precision.name == name
    assert "run by ONNX Runtime" in fast.precision.note
    answers = [p.top[0][0] for p in fast.classify(paths)]
    assert sum(a == b.top[0][0] for a, b in zip(answers, exact.classify(paths))) >= 0.9 * len(paths)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # changed after it was checked: not loaded
    assert Classifier(checkpoint, device="cpu").precision.name == "fp32"


def test_packages_that_run_attention_in_bf16_write_it_out_and_leave_the_model_as_it_was():
    """Where attention runs in bf16, the package's graph holds two matmuls and a softmax of its own
    (WrittenOutAttention: the same numbers), not PyTorch's fused kernel; in fp32 it keeps the kernel."""
    import vit
    from infer import compiled
    from vit.layers.attention import SoftmaxAttention

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 16).unbind(0)  # (B, H, T, hd) each
    bias = torch.randn(1, 4, 7, 7)
    for b in (None, bias):
        assert torch.allclose(compiled.WrittenOutAttention()(q, k, v, b), SoftmaxAttention()(q, k, v, b), atol=1e-6)
    model = vit.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)

    def fused_kernels(precision):
        graphs = [m.graph for m in compiled.program(model, 32, precision, batch_size=2).graph_module.modules()
                  if isinstance(m, torch.fx.GraphModule)]  # (the autocast region is a graph of its own)
        return sum("scaled_dot_product" in str(node.target) for graph in graphs for node in graph.nodes)

    assert fused_kernels("bf16") == 0 and fused_kernels("fp32") == len(model.blocks)
    assert all(type(block.attention.softmax_attention) is SoftmaxAttention for block in model.blocks)
