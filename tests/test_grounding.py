"""Grounding's module split and its refusals: unknown scripts, repeated guesses, dangling or total exclusions."""
import ast
import unicodedata
from pathlib import Path

import pytest

import hypersan.language.grounding as grounding
import hypersan.language.vocabulary as vocabulary
from hypersan.data.datasets import FASHION_MNIST, DatasetInfo
from hypersan.language.grounding import Grounder, GroundingError, extend_vocabulary
from hypersan.language.text import default_encoder
from hypersan.language.vocabulary import normalize, tokenize

PACKAGE = Path(grounding.__file__).parent
CLOTHING = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"]


@pytest.fixture(scope="module")
def grounder():
    return Grounder(FASHION_MNIST, default_encoder()).warmup()


def lexical_only(info=FASHION_MNIST):
    """A grounder that fails the test if it ever needs the sentence encoder."""
    def no_encoder():
        raise AssertionError("this request should be grounded without the sentence encoder")
    return Grounder(info, no_encoder)


def without_bottoms():
    """FASHION_MNIST as it was when "bottoms" was no synonym of anything (the lead may add it to Trouser)."""
    syn = {k: [w for w in v if w.lower() != "bottoms"] for k, v in FASHION_MNIST.synonyms.items()}
    return DatasetInfo.from_dict({**FASHION_MNIST.to_dict(), "synonyms": syn})


# ---------------------------------------------------------------- module split

def package_imports(module: str) -> dict[str, set[str]]:
    """Package modules a source file imports: {enclosing function or "<module>": {module names}}.

    Imports under `if TYPE_CHECKING:` are left out: they never run.
    """
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: dict[str, set[str]] = {}

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom) and (child.level or (child.module or "").startswith("hypersan")):
                base = ["hypersan", "language"][:3 - child.level]  # the module's package, less one per extra dot
                name = child.module if not child.level else ".".join([*base, *([child.module] if child.module else [])])
                found.setdefault(where, set()).add(name)
            elif isinstance(child, ast.Import):
                found.setdefault(where, set()).update(a.name for a in child.names if a.name.startswith("hypersan"))
            visit(child, child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where)
    visit(tree, "<module>")
    return {k: v for k, v in found.items() if v}


def test_words_is_pure_data_and_vocabulary_needs_only_info_and_words():
    assert package_imports("words") == {}
    assert package_imports("vocabulary") == {"<module>": {"hypersan.info", "hypersan.language.words"}}


def test_grounding_depends_on_info_words_and_vocabulary_alone():
    imports = package_imports("grounding")
    assert imports.pop("<module>") == {"hypersan.info", "hypersan.language.words", "hypersan.language.vocabulary"}
    assert imports.pop("encoder") == {"hypersan.language.text"}  # the shared default encoder, loaded on first need
    imports.pop("checkpoint_vocabulary", None)  # reads a checkpoint folder; it is moving out of grounding
    assert imports == {}


def test_grounding_reexports_the_vocabulary_names():
    for name in ("tokenize", "lemma", "Vocabulary", "extend_vocabulary"):
        assert getattr(grounding, name) is getattr(vocabulary, name) and name in grounding.__all__


# ---------------------------------------------------------------- tokenizer

def test_one_character_that_grows_in_lower_case_does_not_stop_lowercasing():
    text = "Bags and Shoes for İzmir"  # "İ".lower() is two characters
    toks = tokenize(text)
    assert [t for t, _, _ in toks] == ["bags", "and", "shoes", "for", "izmir"]
    assert [normalize(text)[a:b] for _, a, b in toks] == ["Bags", "and", "Shoes", "for", "İzmir"]


def test_request_with_a_dotted_capital_i_is_grounded(grounder):
    g = grounder.ground("Bags and Shoes for İzmir")
    assert g.classes == ["Sandal", "Sneaker", "Bag", "Ankle boot"]
    assert [m.text for m in g.matches] == ["Bags", "Shoes for İzmir"]


@pytest.mark.parametrize("text,words", [("кроссовки и сумки", ["кроссовки", "и", "сумки"]), ("鞋和包", ["鞋和包"]),
                                        ("أحذية", ["أحذية"]), ("हिन्दी", ["हिन्दी"]),
                                        ("sneakers & 👜!", ["sneakers", "&", "👜"]), ("café's", ["cafés"])])
def test_words_of_every_script_and_pictographs_are_tokens(text, words):
    assert [t for t, _, _ in tokenize(text)] == words
    assert all(unicodedata.normalize("NFKC", text)[a:b].lower().replace("'", "") == t for t, a, b in tokenize(text))


@pytest.mark.parametrize("request_,unknown", [("кроссовки и сумки", ["кроссовки и сумки"]), ("鞋和包", ["鞋和包"]),
                                             ("أحذية", ["أحذية"]), ("sneakers and 👜", ["👜"])])
def test_words_not_in_latin_script_are_not_understood_rather_than_empty(grounder, request_, unknown):
    with pytest.raises(GroundingError, match="could not understand") as e:
        grounder.ground(request_)
    assert e.value.unknown == unknown and "empty request" not in str(e.value)


# ---------------------------------------------------------------- guesses that repeat another part

def test_a_guess_that_repeats_another_part_is_refused():
    g = Grounder(without_bottoms(), default_encoder())
    assert g.ground("bottoms").matches[0].target == "tops"  # alone, "bottoms" is still guessed (score ~0.61)...
    for request in ("tops and bottoms", "T-shirts and bottoms", "tops except bottoms"):
        with pytest.raises(GroundingError, match="could not understand") as e:  # ...but not next to "tops"
            g.ground(request)
        assert e.value.unknown == ["bottoms"] and "'tops'" in str(e.value) and "already" in str(e.value)


def test_bottoms_as_a_trouser_synonym_grounds_tops_and_bottoms():
    info = extend_vocabulary(without_bottoms(), {"Trouser": ["bottoms"]})
    assert lexical_only(info).ground("tops and bottoms").classes == ["T-shirt/top", "Trouser", "Pullover", "Shirt"]


def test_repeated_spelling_guesses_are_refused_but_an_excluded_one_is_not(grounder):
    with pytest.raises(GroundingError) as e:
        grounder.ground("sneakers and snekers")
    assert e.value.unknown == ["snekers"] and "fuzzy" in str(e.value)
    with pytest.raises(GroundingError) as e:
        grounder.ground("upper body garments")  # "garments" was guessed as all clothing, Trouser and Dress too
    assert e.value.unknown == ["garments"]
    # Leaving out part of what is included is what exclusions are for.
    assert grounder.ground("footwear except sandels").classes == ["Sneaker", "Ankle boot"]
    assert grounder.ground("snekers and sandals").classes == ["Sandal", "Sneaker"]


# ---------------------------------------------------------------- modifiers

def test_a_modifier_that_names_another_object_is_not_dropped(grounder):
    for request, obj in (("airplane bags", "airplane"), ("sneakers and banana shirts", "banana")):
        with pytest.raises(GroundingError, match="could not understand") as e:
            grounder.ground(request)
        assert e.value.unknown == [request.split(" and ")[-1]] and repr(obj) in str(e.value)
    assert grounder.ground("leather handbags").classes == ["Bag"]


def test_a_hyphenated_modifier_stays_with_its_phrase(grounder):
    g = grounder.ground("button-up shirts and sweatpants")
    assert g.classes == ["Trouser", "Shirt"] and g.matches[0].text == "button-up shirts"


# ---------------------------------------------------------------- exclusions

@pytest.mark.parametrize("request_,tail", [("everything except", "except"), ("shoes but not", "but not"),
                                           ("sneakers except bags, not", "not"), ("all bags without", "without")])
def test_a_trailing_exclusion_word_is_refused(request_, tail):
    with pytest.raises(GroundingError, match="nothing after it to leave out") as e:
        lexical_only().ground(request_)
    assert e.value.unknown == [tail] and f'"{tail}"' in str(e.value)


@pytest.mark.parametrize("request_", ["sneakers except sneakers", "everything except everything",
                                      "shoes but not footwear", "all bags except all"])
def test_excluding_everything_included_is_refused(request_):
    with pytest.raises(GroundingError, match="excludes every class it includes"):
        lexical_only().ground(request_)


@pytest.mark.parametrize("request_,expected", [
    ("everything but all the footwear", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt", "Bag"]),
    ("all clothes but dresses", ["T-shirt/top", "Trouser", "Pullover", "Coat", "Shirt"]),
    ("nothing but sneakers", ["Sneaker"]),
    ("sneakers but also bags", ["Sneaker", "Bag"]),
])
def test_but_excludes_only_where_it_means_except(request_, expected):
    assert lexical_only().ground(request_).classes == expected


def test_resolve_lists_the_vocabulary(capsys):
    import json
    from hypersan.cli.commands import main
    assert main(["resolve", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["T-shirt/top", "Trouser"] and any(line.startswith("footwear: Sandal") for line in out)
    assert main(["resolve", "--list", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got["classes"]) == 10 and "Sneaker" in got["groups"]["footwear"]
