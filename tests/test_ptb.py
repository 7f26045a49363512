import io
import tarfile

import pytest
import torch

from onepass.data import UnsafeArchiveError, batchify, download_ptb, iter_windows, load_ptb, n_windows
from onepass.data.ptb import EOS, UNK, ptb_path
from onepass.models import LSTMLanguageModel, detach_hidden

TRAIN = " the cat sat on the mat \n a <unk> sat \n the dog ran on the mat \n"
VALID = " the cat ran \n a zebra sat \n"
TEST = " the mat \n the dog \n"


def write_corpus(data_dir, train=TRAIN, valid=VALID, test=TEST):
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        path = ptb_path(split, data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def tgz(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_vocabulary_eos_and_unknown_words(tmp_path):
    write_corpus(tmp_path)
    data = load_ptb(tmp_path, batch_size=2, bptt=3)
    words = data.vocabulary.words
    assert words[:6] == ["the", "cat", "sat", "on", "mat", EOS]
    assert set(words) == set(TRAIN.split()) | {EOS}
    assert data.vocab_size == len(words) == 10
    # 6 + 1, 3 + 1 and 6 + 1 tokens: the stream is 18 tokens, 9 steps of 2.
    assert data.train.shape == (9, 2)
    stream = data.train.t().reshape(-1)
    assert data.vocabulary.decode(stream[:8]) == "the cat sat on the mat".split() + [EOS, "a"]
    # Valid: 8 tokens, "zebra" is not in the training vocabulary.
    valid = data.valid.t().reshape(-1)
    assert data.vocabulary.decode(valid) == ["the", "cat", "ran", EOS, "a", UNK, "sat", EOS]
    assert data.test.shape == (3, 2)


def test_unk_added_when_training_file_lacks_it(tmp_path):
    write_corpus(tmp_path, train=" a b \n b c \n", valid=" a z \n", test=" c q \n")
    data = load_ptb(tmp_path, batch_size=1, bptt=2)
    assert data.vocabulary.words == ["a", "b", EOS, "c", UNK]
    assert data.vocabulary.decode(data.valid[:, 0]) == ["a", UNK, EOS]


def test_batchify_matches_word_language_model():
    stream = torch.arange(26)
    batched = batchify(stream, 4)
    assert batched.shape == (6, 4)
    assert batched[:, 1].tolist() == list(range(6, 12))  # contiguous columns, tail of 2 dropped
    with pytest.raises(ValueError, match="fewer than 2 steps"):
        batchify(torch.arange(5), 4)


def test_windows_offset_by_one_and_counted():
    source = batchify(torch.arange(46), 2)  # 23 steps
    windows = list(iter_windows(source, 5))
    assert len(windows) == n_windows(source, 5) == 5  # ceil(22 / 5)
    assert [w[0].shape[0] for w in windows] == [5, 5, 5, 5, 2]
    for inputs, targets in windows:
        assert inputs.shape == targets.shape
        assert torch.equal(targets, inputs + 1)
    assert torch.equal(torch.cat([w[0] for w in windows]), source[:-1])
    assert torch.equal(torch.cat([w[1] for w in windows]), source[1:])


def test_hidden_state_carried_across_windows(tmp_path):
    write_corpus(tmp_path)
    data = load_ptb(tmp_path, batch_size=2, bptt=3)
    assert data.n_windows("train") == 3
    torch.manual_seed(0)
    model = LSTMLanguageModel(data.vocab_size, 6, 5, dropout=0.0).eval()
    hidden = model.init_hidden(2)
    pieces = []
    for inputs, _ in data.windows("train"):
        logits, hidden = model(inputs, hidden)
        hidden = detach_hidden(hidden)
        pieces.append(logits)
    assert not hidden[0].requires_grad
    whole, _ = model(data.train[:-1])
    torch.testing.assert_close(torch.cat(pieces), whole)


def test_missing_file_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_ptb(tmp_path)
    assert str(ptb_path("train", tmp_path)) in str(info.value)
    assert "onepass download ptb" in str(info.value)


def test_download_extracts_and_checks_token_counts(tmp_path):
    archive = tgz(tmp_path / "simple-examples.tgz", {
        f"./simple-examples/data/ptb.{split}.txt": text
        for split, text in (("train", TRAIN), ("valid", VALID), ("test", TEST))
    })
    root = download_ptb(tmp_path / "d", url=archive.as_uri(),
                        expected_tokens={"train": 18, "valid": 8, "test": 6}, progress=False)
    assert root == tmp_path / "d" / "ptb"
    assert load_ptb(tmp_path / "d", batch_size=2).train.shape == (9, 2)
    with pytest.raises(ValueError, match="18 tokens, expected 929589"):
        download_ptb(tmp_path / "d", url=archive.as_uri(), progress=False)


def test_download_refuses_archive_escaping_its_folder(tmp_path):
    archive = tgz(tmp_path / "simple-examples.tgz", {
        "simple-examples/data/ptb.train.txt": TRAIN, "../evil": "x"})
    with pytest.raises(UnsafeArchiveError, match="evil"):
        download_ptb(tmp_path / "d", url=archive.as_uri(), progress=False)
    assert not (tmp_path / "d" / "evil").exists()
    assert not (tmp_path / "d" / "ptb" / "simple-examples").exists()
