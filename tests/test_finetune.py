"""Fine-tuning (``moco finetune``): label subsets, initialisations, what trains, exact resume, other backbones,
exports, and one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import fake_checkpoint, make_image_folder
from torch import nn

from moco.cli import main
from moco.config import resolve
from moco.core.errors import DataError
from moco.data.folder import ImageList, scan_images
from moco.export import export_backbone, load_backbone
from moco.models import build_resnet
from moco.tasks.finetune import finetune, finetune_config, map_test_labels
from moco.training.checkpoint import load_checkpoint
from moco.transfer.classifier import Classifier
from moco.transfer.init import init_network
from moco.transfer.labels import balanced_subset, read_labels, write_labels

# width 4 in bf16: torch 2.14's oneDNN hangs in fp32 4-channel channels_last backward passes (conftest)
TINY = ["optim.batch_size=8", "data.workers=0", "train.precision=bf16", "train.log_every=2"]


@pytest.fixture
def ck(tmp_path):
    fake_checkpoint(tmp_path / "ck.pt")
    return tmp_path / "ck.pt"


def listing(root: Path, sizes: list[int]) -> ImageList:
    paths, labels = [], []
    for c, n in enumerate(sizes):
        paths += [f"c{c}/{i:03d}.png" for i in range(n)]
        labels += [c] * n
    return ImageList(root, paths, labels, [f"c{c}" for c in range(len(sizes))])


def per_class(images: ImageList) -> list[int]:
    return [images.labels.count(c) for c in range(len(images.classes))]


def test_subsets_are_balanced_seeded_and_repeatable(tmp_path):
    full = listing(tmp_path, [10, 20, 30])
    five = balanced_subset(full, "5", seed=0)
    assert per_class(five) == [5, 5, 5]
    assert five.paths == balanced_subset(full, "5", seed=0).paths  # same seed, same images
    assert five.paths != balanced_subset(full, "5", seed=1).paths
    assert per_class(balanced_subset(full, "10%")) == [1, 2, 3]
    assert per_class(balanced_subset(full, "1%")) == [1, 1, 1]  # at least one image of every class
    assert balanced_subset(full, "100%").paths == full.paths
    assert per_class(balanced_subset(full, "25")) == [10, 20, 25]  # a small class gives all it has
    # a class's draw does not depend on the other classes: 5 of c0 are the same with c2 grown
    grown = balanced_subset(listing(tmp_path, [10, 20, 40]), "5", seed=0)
    assert [p for p in grown.paths if p.startswith("c0/")] == [p for p in five.paths if p.startswith("c0/")]


def test_labels_file_round_trips(tmp_path):
    full = listing(tmp_path, [10, 20, 30])
    sub = balanced_subset(full, "4", seed=3)
    write_labels(sub, tmp_path / "labels.txt", "4 of each class, seed 3")
    back = read_labels(full, tmp_path / "labels.txt")
    assert back.paths == sub.paths and back.labels == sub.labels
    (tmp_path / "bad.txt").write_text("c0/000.png\nc9/nowhere.png\n")
    with pytest.raises(DataError, match="c9/nowhere.png"):
        read_labels(full, tmp_path / "bad.txt")


def test_random_and_checkpoint_init_differ_only_in_their_weights(tmp_path, ck):
    from moco.export import load_backbone_and_config

    _, src_cfg = load_backbone_and_config(ck)
    cfg = finetune_config(src_cfg, "checkpoint", str(ck), overrides=TINY)
    torch.manual_seed(0)
    a = init_network(cfg, "checkpoint", str(ck), 3, None)
    torch.manual_seed(0)
    b = init_network(cfg, "random", str(ck), 3, None)  # given a checkpoint path, as the transfer report's baseline
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    assert torch.equal(sa["fc.weight"], sb["fc.weight"])  # the new classifier: same draw in both
    saved = load_checkpoint(ck)["model"]
    q = {k[len("encoder_q."):]: v for k, v in saved.items() if k.startswith("encoder_q.") and ".fc." not in k}
    assert q.keys() == {k for k in sa if not k.startswith("fc.")}
    for k, v in q.items():  # the checkpoint init is the query encoder's backbone, exactly (the key encoder differs)
        assert torch.equal(sa[k], v), k
    convs = [k for k in q if q[k].dim() == 4]
    assert all(not torch.equal(saved[f"encoder_k.{k}"], v) for k, v in q.items() if k in convs)
    assert all(not torch.equal(sb[k], q[k]) for k in convs)  # random init: none of the checkpoint's weights


def test_random_init_fine_tunes_the_same_with_or_without_a_checkpoint_path(tmp_path, ck, tiny_data):
    """`--init random` ignores the checkpoint's weights end to end: given the checkpoint (whose architecture it
    takes) it trains to the same weights as the same network named by --set."""
    with_path = run_finetune(ck, tiny_data, tmp_path / "a", init="random", epochs=1, max_steps=3)
    alone = run_finetune(None, tiny_data, tmp_path / "b", "model.width=4", "data.image_size=16", init="random",
                         epochs=1, max_steps=3)
    assert with_path.steps == alone.steps == 3
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt")["model"] for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded = run_finetune(ck, tiny_data, tmp_path / "c", epochs=1, max_steps=3)  # the test can tell them apart
    assert loaded.steps == 3
    c = load_checkpoint(tmp_path / "c" / "checkpoint_last.pt")["model"]
    assert not torch.equal(a["encoder_q.conv1.weight"], c["encoder_q.conv1.weight"])


def run_finetune(ck, data, out, *extra, **kw):
    return finetune(ck, data, out, overrides=[*TINY, *extra], progress=False, **kw)


def test_finetune_trains_the_backbone_and_writes_its_outputs(tmp_path, ck, tiny_data):
    res = run_finetune(ck, tiny_data, tmp_path / "ft", labels="50%", epochs=2)
    out = tmp_path / "ft"
    for name in ("results.json", "labels.txt", "classifier.pt", "metrics.jsonl", "curves.png", "config.yaml",
                 "checkpoint_last.pt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["top1"] == res.top1 and res.top1 is not None and saved["init"] == "checkpoint"
    assert saved["labels"]["images"] == 24 and saved["labels"]["per_class"] == {"class0": 12, "class1": 12}
    assert saved["epochs"] == 2 and saved["cpu"]["capability"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "test_top1" in [r for r in records if r["type"] == "epoch"][-1]
    assert all("train_acc1" in r for r in records if r["type"] in ("step", "epoch"))
    before, after = load_backbone(ck).state_dict(), load_backbone(out / "checkpoint_last.pt").state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])  # end to end: the backbone moved
    # the network exports as a torchvision state dict; the classifier beside it is the network's fc
    exported = torch.load(export_backbone(out / "checkpoint_last.pt", "torchvision", tmp_path / "bb.pth"),
                          weights_only=True)
    net = build_resnet("resnet18", 4, cifar_stem=True)
    net.fc = nn.Identity()
    net.load_state_dict(exported, strict=True)
    clf = torch.load(out / "classifier.pt", weights_only=True)
    ck_model = load_checkpoint(out / "checkpoint_last.pt")["model"]
    assert torch.equal(clf["weight"], ck_model["encoder_q.fc.weight"]) and clf["classes"] == ["class0", "class1"]


def test_a_frozen_backbone_does_not_move(tmp_path, ck, tiny_data):
    """backbone lr 0 and frozen BatchNorm: only the classifier trains (a linear probe), the rest is bit-identical."""
    run_finetune(ck, tiny_data, tmp_path / "ft", "finetune.backbone_lr=0", "finetune.bn=frozen", epochs=1)
    before, after = load_backbone(ck).state_dict(), load_backbone(tmp_path / "ft" / "checkpoint_last.pt").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    fc = load_checkpoint(tmp_path / "ft" / "checkpoint_last.pt")["model"]["encoder_q.fc.weight"]
    from moco.export import load_backbone_and_config

    cfg = finetune_config(load_backbone_and_config(ck)[1], "checkpoint", str(ck), overrides=TINY)
    torch.manual_seed(cfg.train.seed)  # the run's draw of the new classifier (open_run seeds it so)
    start = init_network(cfg, "checkpoint", str(ck), 2, None).fc.weight
    assert start.shape == fc.shape and not torch.equal(start, fc)  # the classifier trained


def test_batchnorm_trains_by_default_and_frozen_keeps_its_statistics(ck):
    from moco.export import load_backbone_and_config

    net, cfg = load_backbone_and_config(ck)
    net.fc = nn.Linear(32, 2)
    for bn, changes in (("train", True), ("frozen", False)):
        model = Classifier(net, bn).train()
        mean = net.bn1.running_mean.clone()
        model(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]))
        assert (not torch.equal(mean, net.bn1.running_mean)) == changes
        assert net.bn1.weight.requires_grad == changes


@pytest.mark.parametrize("stop_at", [5, 21])  # mid-epoch, and at the end of the first (21 steps an epoch)
def test_resume_is_exact(tmp_path, ck, tiny_data, stop_at):
    run_finetune(ck, tiny_data, tmp_path / "full", labels="50%", epochs=2)
    part = run_finetune(ck, tiny_data, tmp_path / "part", labels="50%", epochs=2, max_steps=stop_at)
    assert part.stopped and not (tmp_path / "part" / "results.json").exists()
    res = finetune(None, None, tmp_path / "part", resume="auto", progress=False)  # the run knows the rest
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] == 42 and not res.stopped
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert res.top1 == json.loads((tmp_path / "full" / "results.json").read_text())["top1"]


def test_a_vit_and_a_torchvision_backbone_fine_tune(tmp_path, tiny_data):
    fake_checkpoint(tmp_path / "vit.pt", "model.arch=vit_tiny", "model.patch_size=4", "model.head=v3",
                    "method.dictionary=v3", "model.stop_grad_conv1=true")
    fake_checkpoint(tmp_path / "tv.pt", "model.arch=torchvision:resnet18")
    for name in ("vit", "tv"):
        res = run_finetune(tmp_path / f"{name}.pt", tiny_data, tmp_path / name, epochs=1, max_steps=3)
        assert res.steps == 3
        before = load_backbone(tmp_path / f"{name}.pt").state_dict()
        after = load_backbone(tmp_path / name / "checkpoint_last.pt").state_dict()
        # every parameter (not BatchNorm statistics; the ViT's sin-cos position embedding is fixed)
        weights = [k for k in before if "running_" not in k and "num_batches" not in k and "pos_embedding" not in k]
        moved = [k for k in weights if not torch.equal(before[k], after[k])]
        assert len(moved) == len(weights), (name, sorted(set(weights) - set(moved)))
        if name == "vit":  # frozen while pretraining (v3), the patch projection is fine-tuned like the rest
            assert "conv_proj.weight" in moved
    state = torch.load(export_backbone(tmp_path / "tv" / "checkpoint_last.pt", "torchvision", tmp_path / "tv.pth"),
                       weights_only=True)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(state, strict=True)


def test_labels_file_repeats_a_run_and_random_init_needs_no_checkpoint(tmp_path, ck, tiny_data, capsys):
    base = ["--data", str(tiny_data), "--epochs", "1", "--no-progress", *[x for s in TINY for x in ("--set", s)]]
    assert main(["finetune", "--checkpoint", str(ck), "--labels", "25%", "--out", str(tmp_path / "a"), *base]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["labels"]["images"] == 12 and printed["top1"] is not None
    assert main(["finetune", "--init", "random", "--labels-file", str(tmp_path / "a" / "labels.txt"),
                 "--set", "model.width=4", "--set", "data.image_size=16", "--out", str(tmp_path / "b"), *base]) == 0
    lines = [(tmp_path / n / "labels.txt").read_text().splitlines() for n in ("a", "b")]
    assert [x for x in lines[0] if not x.startswith("#")] == [x for x in lines[1] if not x.startswith("#")]
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["init"] == "random" and b["checkpoint"] == "" and b["config"]["model"]["width"] == 4


def one_line(code_err):
    code, err = code_err
    return code, err.strip(), err.strip().count("\n") == 0


def cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_input_gets_one_line(tmp_path, ck, tiny_data, capsys):
    base = ["finetune", "--no-progress", "--epochs", "1", *[x for s in TINY for x in ("--set", s)]]
    odd = tmp_path / "odd"
    make_image_folder(odd / "train", classes=2, per_class=4)
    make_image_folder(odd / "test", classes=3, per_class=2)  # class2 is not in train/
    cases = [
        (["--checkpoint", str(ck), "--data", str(odd), "--out", str(tmp_path / "o1")], 1, "lacks (class2)"),
        (["--checkpoint", str(ck), "--data", str(tiny_data), "--labels", "0%", "--out", str(tmp_path / "o2")], 2,
         "--labels takes"),
        (["--checkpoint", str(ck), "--data", str(tiny_data), "--labels", "ten", "--out", str(tmp_path / "o3")], 2,
         "--labels takes"),
        (["--init", "checkpoint", "--data", str(tiny_data), "--out", str(tmp_path / "o4")], 2, "needs --checkpoint"),
        (["--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tiny_data), "--out", str(tmp_path / "o5")], 1,
         "checkpoint not found"),
        (["--checkpoint", str(ck), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o6")], 1,
         "data folder not found"),
    ]
    (tmp_path / "list.txt").write_text("class0/000.png\nclass7/x.png\n")
    cases.append((["--checkpoint", str(ck), "--data", str(tiny_data), "--labels-file", str(tmp_path / "list.txt"),
                   "--out", str(tmp_path / "o7")], 1, "class7/x.png"))
    flat = tmp_path / "flat"
    make_image_folder(flat, classes=1, per_class=3)
    for f in (flat / "class0").iterdir():
        f.rename(flat / f.name)
    cases.append((["--checkpoint", str(ck), "--train", str(flat), "--out", str(tmp_path / "o8")], 1,
                  "no class sub-folders"))
    for argv, code, message in cases:
        got, err, single = one_line(cli(base + argv, capsys))
        assert got == code and message in err and single, (argv, err)


def test_finetune_will_not_resume_a_pretraining_run(tmp_path, ck, tiny_data, capsys):
    from conftest import tiny_config

    from moco.tasks.pretrain import pretrain

    pretrain(tiny_config(tmp_path, "optim.epochs=1"), tiny_data, tmp_path / "pre", progress=False, max_steps=2)
    code, err, single = one_line(cli(["finetune", "--checkpoint", str(ck), "--data", str(tiny_data), "--out",
                                      str(tmp_path / "pre"), "--resume", "auto", "--no-progress"], capsys))
    assert code == 1 and single and "not a fine-tuning checkpoint" in err
    run_finetune(ck, tiny_data, tmp_path / "ft", epochs=1, max_steps=1)  # and the other way round
    code, err, single = one_line(cli(["pretrain", "--data", str(tiny_data), "--out", str(tmp_path / "ft"),
                                      "--resume", "auto", "--no-progress"], capsys))
    assert code == 1 and single and "not a pretraining checkpoint" in err



def test_shards_fine_tune_as_their_folder_does_resume_and_take_its_labels_file(tmp_path, ck, tiny_data, capsys):
    """The same images as WebDataset shards (`moco shards`: keys and .cls) choose the same labels and train to the
    same weights; the run resumes from its checkpoint's shards, and a folder run's labels.txt picks its keys."""
    import tarfile

    assert main(["shards", "--data", str(tiny_data), "--out", str(tmp_path / "sh"), "--shard-size", "2kB",
                 "--no-progress"]) == 0
    capsys.readouterr()
    shards = tmp_path / "sh"
    assert len(list(shards.glob("train-*.tar"))) > 1 and list(shards.glob("test-*.tar"))
    folder = run_finetune(ck, tiny_data, tmp_path / "folder", labels="50%", epochs=2)
    stream = run_finetune(ck, shards, tmp_path / "shards", labels="50%", epochs=2, max_steps=30)
    assert stream.stopped
    resumed = finetune(None, None, tmp_path / "shards", resume="auto", progress=False)
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("folder", "shards"))
    assert a["step"] == b["step"] == 42 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed.top1 == folder.top1 and resumed.labels["per_class"] == folder.labels["per_class"]
    keys = [x for x in (tmp_path / "shards" / "labels.txt").read_text().splitlines() if not x.startswith("#")]
    paths = [x for x in (tmp_path / "folder" / "labels.txt").read_text().splitlines() if not x.startswith("#")]
    assert keys == [p.rsplit(".", 1)[0] for p in paths]
    # --train/--test as patterns and lists; the folder run's labels.txt names the shards' keys
    (tmp_path / "test.txt").write_text("\n".join(str(p) for p in sorted(shards.glob("test-*.tar"))) + "\n")
    n = len(list(shards.glob("train-*.tar")))
    pattern = str(shards / f"train-{{000000..{n - 1:06d}}}.tar")
    again = run_finetune(ck, None, tmp_path / "again", epochs=2, train_dir=pattern, test_dir=str(tmp_path / "test.txt"),
                         labels_file=tmp_path / "folder" / "labels.txt")
    assert again.labels == {**folder.labels, "spec": None, "file": str(tmp_path / "again" / "labels.txt")}
    assert again.top1 == folder.top1  # the same images, the same weights
    # shards without .cls cannot be fine-tuned on: one line naming a sample
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w") as tf:
        tf.add(tiny_data / "train" / "class0" / "000.png", arcname="x/000.png")
    code, err = cli(["finetune", "--checkpoint", str(ck), "--train", str(bare), "--out", str(tmp_path / "o"),
                     "--no-progress"], capsys)
    assert code == 1 and "'x/000' has no .cls label" in err and err.strip().count("\n") == 0, err


def test_every_class_draws_its_labels_with_a_seed_of_its_own(tmp_path):
    """Classes of the same size pick different positions: a shared seed would choose the same ranks in each."""
    picks = balanced_subset(listing(tmp_path, [20, 20, 20]), "5", seed=0)
    positions = [sorted(int(p.split("/")[1][:3]) for p in picks.paths if p.startswith(f"c{c}/")) for c in range(3)]
    assert positions[0] != positions[1] != positions[2] != positions[0]


def test_the_labels_seed_setting_chooses_the_images(tmp_path, ck, tiny_data):
    def chosen(seed):
        run_finetune(ck, tiny_data, tmp_path / f"s{seed}", f"finetune.labels_seed={seed}", labels="4", epochs=1,
                     max_steps=1)
        return [x for x in (tmp_path / f"s{seed}" / "labels.txt").read_text().splitlines() if not x.startswith("#")]

    zero, one = chosen(0), chosen(1)
    assert len(zero) == len(one) == 8 and zero != one
    assert zero == balanced_subset(scan_images(tiny_data / "train"), "4", seed=0).paths  # the draw it says it made


def test_test_labels_are_mapped_to_the_training_classes_by_name(tmp_path, ck):
    """A test split with fewer classes than training, in another order, is scored against the right classes."""
    train = ImageList(tmp_path, ["a/0.png", "b/0.png", "c/0.png"], [0, 1, 2], ["a", "b", "c"])
    test = ImageList(tmp_path, ["c/0.png", "a/0.png", "a/1.png"], [0, 1, 1], ["c", "a"])
    assert map_test_labels(train, test).tolist() == [2, 0, 0]
    # end to end: 3 colour classes train; the test split holds classes 1 and 2 only (its indices 0 and 1)
    data = tmp_path / "three"
    make_image_folder(data / "train", classes=3, per_class=16)
    make_image_folder(data / "test", classes=3, per_class=8, seed=1)
    shutil.rmtree(data / "test" / "class0")
    res = run_finetune(ck, data, tmp_path / "ft", epochs=2)
    # the colours separate (62.5% in 2 bf16 epochs on a Zen 4); the positional mapping scores the same
    # predictions against the wrong classes: under 40
    assert res.top1 >= 55.0, res.top1


def test_a_resumed_fine_tune_keeps_its_labels_when_the_folder_changed(tmp_path, ck, tiny_data):
    """Resuming reads RUN/labels.txt: images added to the training folder in between change neither the images
    trained on nor the weights (the same as a run that was not interrupted)."""
    data = tmp_path / "moving"
    shutil.copytree(tiny_data, data)
    run_finetune(ck, data, tmp_path / "full", labels="6", epochs=2)
    part = run_finetune(ck, data, tmp_path / "part", labels="6", epochs=2, max_steps=25)
    assert part.stopped
    written = (tmp_path / "part" / "labels.txt").read_text()
    make_image_folder(tmp_path / "more", per_class=30, seed=5)  # new files that sort before and among the old
    for f in (tmp_path / "more").rglob("*.png"):
        shutil.copy(f, data / "train" / f.parent.name / f"0{f.name}")
    finetune(None, None, tmp_path / "part", resume="auto", progress=False)
    assert (tmp_path / "part" / "labels.txt").read_text() == written
    a, b = (load_checkpoint(tmp_path / n / "checkpoint_last.pt") for n in ("full", "part"))
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_more_bad_input_gets_one_line(tmp_path, ck, tiny_data, capsys):
    base = ["finetune", "--no-progress", "--epochs", "1", *[x for s in TINY for x in ("--set", s)]]
    run = ["--checkpoint", str(ck), "--data", str(tiny_data)]
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    cases = [
        ([*run, "--init", "pretrained"], 2, "--init takes checkpoint, random or supervised:CKPT, got 'pretrained'"),
        (["--data", str(tiny_data), "--init", "supervised:"], 2, "--init supervised:CKPT names"),
        ([*run, "--labels-file", str(tmp_path / "empty.txt")], 1, "empty.txt lists no images"),
        ([*run, "--labels-file", str(tmp_path / "binary.txt")], 1, "binary.txt: cannot be read"),
        ([*run, "--labels-file", str(tmp_path / "missing.txt")], 1, "missing.txt: cannot be read"),
    ]
    for i, (argv, code, message) in enumerate(cases):
        got, err, single = one_line(cli([*base, *argv, "--out", str(tmp_path / f"o{i}")], capsys))
        assert got == code and message in err and single, (argv, err)


def test_shards_with_a_bad_label_or_no_labelled_sample_get_one_line(tmp_path, ck, tiny_data, capsys):
    import io
    import tarfile

    png = (tiny_data / "train" / "class0" / "000.png").read_bytes()

    def shard(name, members):
        with tarfile.open(tmp_path / name, "w") as tf:
            for arcname, body in members:
                info = tarfile.TarInfo(arcname)
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
        return str(tmp_path / name)

    cases = [(shard("nan.tar", [("k/0.png", png), ("k/0.cls", b"cat")]),
              "sample 'k/0' has .cls b'cat', not a class index"),
             (shard("none.tar", [("k/0.txt", b"no image")]), "no labelled sample")]
    for i, (path, message) in enumerate(cases):
        got, err, single = one_line(cli(["finetune", "--checkpoint", str(ck), "--train", path, "--out",
                                         str(tmp_path / f"o{i}"), "--no-progress"], capsys))
        assert got == 1 and message in err and single, (path, err)


def test_the_pretrained_method_is_kept_as_a_record_and_does_not_limit_the_batch():
    from moco.tasks.detect import detect_config

    source = resolve("cifar10-cpu", overrides=["method.K=64", "optim.batch_size=64"])
    for make in (finetune_config, detect_config):
        cfg = make(source, "checkpoint", "ck.pt", overrides=["optim.batch_size=256"])  # more keys than K
        assert cfg.method.K == 64 and cfg.optim.batch_size == 256
