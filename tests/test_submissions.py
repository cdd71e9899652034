"""Leaderboard submission files: names, formats and the archive the servers expect."""
import json
import zipfile

from rlnlu.files import write_jsonl
from rlnlu.submissions import write_submission
from rlnlu.tasks import get_task


def _predictions(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(path, rows)
    return str(path)


def test_glue_archive(tmp_path):
    cola = _predictions(tmp_path, "cola", [{"idx": 0, "prediction": "acceptable"},
                                            {"idx": 1, "prediction": None}])
    rte = _predictions(tmp_path, "rte", [{"idx": 0, "prediction": "not_entailment"}])
    stsb = _predictions(tmp_path, "stsb", [{"idx": 0, "prediction": 3.25}])
    mnli = _predictions(tmp_path, "mnli", [{"idx": 7, "prediction": "neutral"}])
    tasks = [get_task("glue", n) for n in ("cola", "rte", "stsb", "mnli_mm")]
    out = tmp_path / "glue.zip"
    names = write_submission("glue", tasks, [cola, rte, stsb, mnli], str(out))
    assert names == ["CoLA.tsv", "RTE.tsv", "STS-B.tsv", "MNLI-mm.tsv"]
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == names  # at the archive's root
        cola_lines = archive.read("CoLA.tsv").decode().splitlines()
        assert cola_lines[0] == "index\tprediction" and cola_lines[1] == "0\t1"
        assert cola_lines[2].split("\t")[1] in ("0", "1")  # an invalid answer still gets a label
        assert archive.read("RTE.tsv").decode().splitlines()[1] == "0\tnot_entailment"
        assert archive.read("STS-B.tsv").decode().splitlines()[1] == "0\t3.250"
        assert archive.read("MNLI-mm.tsv").decode().splitlines()[1] == "7\tneutral"


def test_superglue_archive(tmp_path):
    boolq = _predictions(tmp_path, "boolq", [{"idx": 3, "prediction": "true"}])
    copa = _predictions(tmp_path, "copa", [{"idx": 0, "prediction": "choice2"}])
    multirc = _predictions(tmp_path, "multirc", [
        {"idx": 0, "group": "0-0", "prediction": "true"},
        {"idx": 1, "group": "0-0", "prediction": "false"},
        {"idx": 2, "group": "0-1", "prediction": "true"}])
    record = _predictions(tmp_path, "record", [
        {"idx": "5-0", "group": "5", "fields": {"entity": "Paris"}, "prediction": "false"},
        {"idx": "5-1", "group": "5", "fields": {"entity": "Rome"}, "prediction": "true"},
        {"idx": "6-0", "group": "6", "fields": {"entity": "Oslo"}, "prediction": "false"}])
    tasks = [get_task("superglue", n) for n in ("boolq", "copa", "multirc", "record")]
    out = tmp_path / "superglue.zip"
    write_submission("superglue", tasks, [boolq, copa, multirc, record], str(out))
    with zipfile.ZipFile(out) as archive:
        read = {name: [json.loads(line) for line in archive.read(name).decode().splitlines()]
                for name in archive.namelist()}
    assert read["BoolQ.jsonl"] == [{"idx": 3, "label": "true"}]
    assert read["COPA.jsonl"] == [{"idx": 0, "label": 1}]
    assert read["MultiRC.jsonl"] == [{"idx": 0, "passage": {"questions": [
        {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
        {"idx": 1, "answers": [{"idx": 2, "label": 1}]}]}}]
    # the accepted entity, or the first candidate when none is accepted
    assert read["ReCoRD.jsonl"] == [{"idx": 5, "label": "Rome"}, {"idx": 6, "label": "Oslo"}]
