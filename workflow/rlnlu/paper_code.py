"""The paper's released code, read without being run.

The paper's prompts live in one file of its repository, `prompt.py`, at the only published
commit. The suite obtains that file (downloaded from the pinned commit, or a local copy
when offline), checks its sha256, and reads its templates with `ast`: the file is string
constants, `+=` concatenations, lists and dicts of names, and anything else in it is
refused rather than executed. The repository has no licence, so none of its text is kept
in this one.
"""
from __future__ import annotations

import ast
import hashlib
import shutil
import urllib.request
from pathlib import Path

from .files import atomic_path

REPOSITORY = "coder-qicao/RL4GLUE"
COMMIT = "2ad8bc53f663797bef091db108175fc8651cf538"
PROMPT_FILE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/prompt.py"
PROMPT_FILE_SHA256 = "ed177ec6c44b19913c5c258eaaeb86025c9a85be052300cb36586a24ca64fb71"


class PaperCodeError(ValueError):
    pass


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_prompt_file(path: Path) -> None:
    """Refuse any file but the pinned commit's prompt.py, naming both hashes."""
    found = sha256_of(path)
    if found != PROMPT_FILE_SHA256:
        raise PaperCodeError(
            f"{path}: sha256 {found}, but the paper's prompt.py at commit {COMMIT} has "
            f"{PROMPT_FILE_SHA256}; point paper_code.prompt_file at an unmodified copy of "
            f"{PROMPT_FILE_URL}")


def obtain_prompt_file(out: Path, local_copy: str | None = None) -> None:
    """Copy `local_copy`, or download the pinned file, to `out`, after checking its hash."""
    out = Path(out)
    with atomic_path(out) as tmp:
        if local_copy:
            if not Path(local_copy).is_file():
                raise PaperCodeError(
                    f"paper_code.prompt_file: {local_copy} does not exist; give a local copy "
                    f"of {PROMPT_FILE_URL}, or set it to null to download it")
            shutil.copyfile(local_copy, tmp)
        else:
            try:
                with urllib.request.urlopen(PROMPT_FILE_URL, timeout=60) as response:
                    Path(tmp).write_bytes(response.read())
            except OSError as err:
                raise PaperCodeError(
                    f"could not download {PROMPT_FILE_URL} ({err}); offline, set "
                    "paper_code.prompt_file to a local copy of it") from None
        check_prompt_file(Path(tmp))


def _value(node: ast.AST, names: dict, path: Path):
    """The value of an expression made of constants, lists, dicts and earlier names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.List):
        return [_value(item, names, path) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k, names, path): _value(v, names, path)
                for k, v in zip(node.keys, node.values)}
    raise PaperCodeError(f"{path}:{node.lineno}: {ast.dump(node)[:80]} is not a constant, list, "
                         "dict or earlier name; the file is not the paper's prompt.py")


def read_prompt_file(path: Path) -> dict:
    """Every name that `prompt.py` defines, read from its syntax tree, never executed."""
    path = Path(path)
    names: dict = {}
    for statement in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)):
            continue  # a section heading written as a bare string
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            names[statement.targets[0].id] = _value(statement.value, names, path)
        elif (isinstance(statement, ast.AugAssign) and isinstance(statement.op, ast.Add)
              and isinstance(statement.target, ast.Name)
              and isinstance(names.get(statement.target.id), str)):
            names[statement.target.id] += _value(statement.value, names, path)
        else:
            raise PaperCodeError(
                f"{path}:{statement.lineno}: a {type(statement).__name__} statement; the paper's "
                "prompt.py holds only assignments and `+=` of strings, so this file is refused "
                "unread")
    return names


def paper_templates(path: Path) -> dict:
    """The paper's templates: `prompt_tmp` (evaluation and PPO) and `sft_prompts` (SFT),
    each a dict from the paper's task key ('sst', 'sts-b', 'mnli', ...) to a template."""
    check_prompt_file(Path(path))
    names = read_prompt_file(path)
    return {"eval": names["prompt_tmp"], "sft": names["sft_prompts"]}
