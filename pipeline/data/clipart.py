"""Open Clip Art and Tux Paint stamps: discovery, readable English captions, parallel decoding.

Open Clip Art names are noisy (`glace_06_jean-victor_bal_01.png`: a French title, an author name cut
at 25 characters, counters). `clean_oca_caption` turns folder + file name into "folders: title"
("food, desserts: ice cream"). Tux Paint stamps carry a `.txt` whose first line is English.

Decoding is the slowest step of the build (8k PNGs up to 1500 px); `load_images` runs it in a
process pool and turns every undecodable file into a counted skip, never a crash.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable

from pipeline.data.imaging import load_any

# Authors seen in the file names (often cut short: "architetto_fra", "benji_p"); removed wherever a
# run of their name's tokens appears, the last token of the run possibly truncated.
AUTHORS = [
    "aj ashton", "andreas nilsson", "anthony liekens", "anton yu", "architetto francesco rollandin",
    "arjen meijer", "aubanel monnier", "benji park", "brice boyer", "cedric bosdon",
    "charles mccolm", "christoph brill", "costea bogdan", "dan gerhards", "dave pena",
    "dennis bourque", "dirk struve", "enrique meza c", "etienne bersac", "fabien omic ch",
    "frederic moser", "fudriot omic ch", "gabrielle nowicki", "gerald g", "guillaume boitel",
    "jakob chaosinfa", "janet theobroma", "jarno vasamaa", "jean victor balin", "jon phillips",
    "jonathan dietrich", "juliane krug", "leif lodahl", "linda kim", "marcelo staudt",
    "matt todd", "matthew gates", "mauro olivo", "michael breuer", "michael tunnicliffe",
    "nathan eady", "nicolas cle", "nicu buculei", "patricia fidi", "richard torkar",
    "roman bertle", "rory mccann", "ruud steltenpool", "sergio luiz araujo silva",
    "shandy brown", "stefan bazelkov", "stuart moore", "susan park", "tanguy jacq",
    "wolfram esser", "yen cheng", "yves guillou", "lumen design studio", "rob lucas",
    "frank warttig", "timothy whitley", "joel montes de oca", "josu alcalde", "ralf stephan",
    "francesco rollandin", "alex kuehne", "orlando karam", "kurt cagle", "mirjam meijer",
    "didier fabert", "michael jahn", "petri lummemaki", "glenn rolland", "seth yastrov",
    "joeseph teed", "gino rivera", "fco andrade", "andy fitzsimon", "ruairi hann",
    "stepan kliuiev", "james kilfiger", "marcelo caiafa", "toh yen cheng", "rgio luiz araujo",
    "nicolas clemente", "yet another paul", "emule org", "hash 0x89c79d4",
]


# Distinctive single names (user names, or surnames that are no English word); removed on their
# own, also when cut short to 4+ letters at the end of a name.
AUTHOR_WORDS = {
    "architetto", "benji", "ganson", "buculei", "vasamaa", "jonadab", "nurbldoff", "nubldoff",
    "peterm", "mimooh", "zazou", "romus", "frouke", "mateya", "snuatautisticido", "krug",
    "gerhards", "liekens", "araujo", "guillou", "yemu", "rollandin", "balin", "omic", "fudriot",
    "chaosinfa", "saurabh", "gerald", "johnny", "yager", "uliphant", "celso", "renardjb",
    "teudimundo", "abiclipa", "structor", "durex", "denco", "erwan", "jorkon", "utrescu",
    "guziec", "sek", "lumen", "federico", "auban", "aubanel", "patri", "patricia",
}


# Foreign words frequent in the titles (mostly Italian, from one prolific author), and shorthand.
TRANSLATE = {
    "gatto": "cat", "leone": "lion", "tigre": "tiger", "cane": "dog", "cavallo": "horse",
    "uccello": "bird", "pesce": "fish", "mucca": "cow", "maiale": "pig", "topo": "mouse",
    "medicina": "medicine", "dottore": "doctor", "esperimento": "experiment", "chimico": "chemical",
    "ruota": "wheel", "dentata": "toothed", "mattone": "brick", "tavola": "table", "esame": "test",
    "ottico": "eye", "zaino": "backpack", "per": "for", "montagna": "mountain", "glace": "ice cream",
    "stara": "old", "ksiega": "book", "casa": "house", "albero": "tree", "fiore": "flower",
    "libro": "book", "sedia": "chair", "tavolo": "table", "bicchiere": "glass", "bottiglia": "bottle",
    "macchina": "car", "auto": "car", "treno": "train", "nave": "ship", "aereo": "airplane",
    "bici": "bicycle", "bicicletta": "bicycle", "chiave": "key", "martello": "hammer",
    "forbici": "scissors", "orologio": "clock", "lampada": "lamp", "telefono": "telephone",
    "mela": "apple", "pera": "pear", "uva": "grapes", "pane": "bread", "formaggio": "cheese",
    "vino": "wine", "caffe": "coffee", "sole": "sun", "luna": "moon", "stella": "star",
    "nuvola": "cloud", "pioggia": "rain", "neve": "snow", "fuoco": "fire", "acqua": "water",
    "uomo": "man", "donna": "woman", "bambino": "child", "ragazza": "girl", "ragazzo": "boy",
    "scuola": "school", "chiesa": "church", "ponte": "bridge", "strada": "road", "cartello": "sign",
    "segnale": "sign", "freccia": "arrow", "cuore": "heart", "bandiera": "flag",
    "architetto": "", "tux": "penguin", "bw": "black and white", "bwh": "black and white",
    "vegitables": "vegetables", "baloon": "balloon", "cigno": "swan", "coccinelle": "ladybug",
    "coccinella": "ladybug", "ours": "bear", "utensile": "tool", "sega": "saw", "tasto": "key",
    "pinguino": "penguin", "martellare": "hammering", "eau": "water", "non": "not",
    "potable": "drinkable", "obligatoire": "required", "premiers": "first", "secours": "aid",
    "sortie": "exit", "issue": "exit", "suivre": "follow", "acquila": "eagle", "aquila": "eagle",
    "simbolo": "symbol", "egizio": "egyptian", "farfalla": "butterfly", "orso": "bear",
    "pulsante": "button", "finestra": "window", "finestre": "windows", "sovrapposte": "overlapping",
    "dinosauro": "dinosaur", "dinosauri": "dinosaurs", "lucertola": "lizard", "gallo": "rooster",
    "profilo": "profile", "cubo": "cube", "giallo": "yellow", "grigio": "grey", "aviso": "warning",
    "bussola": "compass", "lumaca": "snail", "moschito": "mosquito", "zanzara": "mosquito",
    "mostriciattolo": "little monster", "lucchetto": "padlock", "elefante": "elephant",
    "legno": "wood", "tatuaggio": "tattoo", "tatoo": "tattoo", "cronometro": "stopwatch",
    "lente": "lens", "champignon": "mushroom", "disquete": "floppy disk", "pastas": "folders",
    "matieres": "materials", "comburantes": "oxidizing", "radiations": "radiation",
    "ionisantes": "ionizing", "risque": "risk", "biologique": "biological", "vehicules": "vehicles",
    "manutention": "handling", "collant": "tights", "contour": "outline", "strai": "straight",
    "ampelmaennchen": "traffic light man", "ampelfrau": "traffic light woman", "flamand": "flemish",
    "punaisa": "bug", "amibe": "amoeba", "preenchimento": "fill", "tatuagg": "", "fra": "",
    "mpcad": "", "kallisti": "", "doublesight": "",
}


# Tokens that carry no meaning in a caption (counters, variants, size tags, file-type noise).
JUNK = {
    "pt", "step", "md", "sm", "lg", "px", "svg", "png", "icon", "ico", "img", "copy", "new2",
    "final", "draft", "version", "ver", "v", "r", "the", "of", "and", "a", "an", "aiga", "gnome",
    "mime", "etiquette", "bb", "ooo", "kde", "gtk", "plastik", "di", "de", "la", "le", "du",
    "des", "il", "del", "della", "en", "et", "vnd", "application",
}


KEEP_SHORT = {"tv", "cd", "dvd", "ok", "go", "up", "on", "no", "in", "at", "to", "pc", "id", "ox"}


# Folder names: readable replacements ("" drops the folder from the label).
FOLDERS = {
    "signs_and_symbols": "signs and symbols", "map_symbols": "map symbols", "led": "led display",
    "aiga-symbols": "transport symbols", "breads_and_carbs": "breads", "meats_and_eggs": "meat and eggs",
    "big_cats": "big cats", "housecats": "house cats", "cd_player": "cd player", "bodypart": "body parts",
    "smilies": "smiley faces", "stickmen": "stick figures", "cardbacks": "card backs",
    "roadsigns": "road signs", "naturalforces": "natural forces", "mimetypes": "file types",
    "filesystems": "file systems", "apps": "applications", "action": "actions", "device": "devices",
    "united_states": "united states", "united_kingdom": "united kingdom", "new_zealand": "new zealand",
    "etiquette-theme": "", "flat-theme": "", "lemon-theme": "", "generic": "", "stock": "",
    "miscellany": "", "unsorted": "", "duplicates": "", "special": "", "examples": "",
    "00_strawberry_border": "strawberry border", "01_gift_certificate": "gift certificate",
    "simple": "", "white": "", "bordered": "", "ornamental": "",
}


_CARD_SUITS = {"h": "hearts", "s": "spades", "c": "clubs", "d": "diamonds"}


_CARD_RANKS = {"a": "ace", "k": "king", "q": "queen", "j": "jack"}


_AUTHOR_TOKENS = [tuple(a.split()) for a in AUTHORS]


def _tokens(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # camelCase -> camel Case
    return re.findall(r"[a-z]+|[0-9]+", text.lower())  # also splits "arrow08", "93pt13step"


def _strip_authors(toks: list[str]) -> list[str]:
    changed = True
    while changed and toks:
        changed = False
        for author in _AUTHOR_TOKENS:
            n = len(author)
            for i in range(len(toks)):
                # a full or prefix run of the author's tokens starting at i; the run's last token may
                # be cut short only when it ends the name (file names were cut at 25 characters).
                k = 0
                while k < n and i + k < len(toks) and toks[i + k] == author[k]:
                    k += 1
                at_end = i + k == len(toks)
                if k < n and i + k == len(toks) - 1 and k >= 1 and author[k].startswith(toks[i + k]):
                    k, at_end = k + 1, True
                if k == n or (at_end and k >= 2):
                    del toks[i : i + k]
                    changed = True
                    break
            if changed:
                break
        if not changed:
            for i, t in enumerate(toks):
                last = i == len(toks) - 1
                if t in AUTHOR_WORDS or (last and len(t) >= 3 and any(w.startswith(t) for w in AUTHOR_WORDS)):
                    del toks[i]
                    changed = True
                    break
    return toks


def _card_caption(folders: list[str], stem: str) -> str | None:
    m = re.fullmatch(r"[a-z]+_([hscd])_([0-9]+|[akqj])", stem.lower())
    if "cards" not in folders or not m:
        return None
    rank = _CARD_RANKS.get(m[2], m[2])
    return f"{rank} of {_CARD_SUITS[m[1]]} playing card"


def folder_label(folders: list[str]) -> str:
    parts = []
    for f in folders:
        name = FOLDERS.get(f.lower(), f.lower().replace("_", " ").replace("-", " "))
        if name and name not in parts:
            parts.append(name)
    return ", ".join(parts)


def clean_title(stem: str) -> str:
    """A readable English title from an Open Clip Art file stem (may be empty)."""
    toks = [t for t in _tokens(stem) if not t.isdigit()]
    toks = _strip_authors(toks)
    out: list[str] = []
    for t in toks:
        t = TRANSLATE.get(t, t)
        if not t or t in JUNK or (len(t) < 3 and t not in KEEP_SHORT):
            continue
        for w in t.split():
            if w not in out:
                out.append(w)
    return " ".join(out)


def clean_oca_caption(relpath: str) -> str:
    """'food/desserts/glace_06_jean-victor_bal_01.png' -> 'food, desserts: ice cream'."""
    parts = relpath.split("/")
    folders, stem = parts[:-1], parts[-1].rsplit(".", 1)[0]
    label = folder_label(folders)
    title = _card_caption(folders, stem) or clean_title(stem)
    if not title:  # nothing readable left: the folder says what it is
        return label or "clip art"
    return f"{label}: {title}" if label else title


def tux_caption(image: Path, stamps_root: Path) -> str:
    """'animals, mammals, cats: a happy lion!' from the stamp's folders and the first (English)
    line of its `.txt`; the cleaned file name when there is no `.txt`."""
    rel = image.relative_to(stamps_root)
    label = folder_label([p for p in rel.parts[:-1] if p != "cartoon"])
    text = ""
    txt = image.with_suffix(".txt")
    if txt.is_file():
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not re.match(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?(@\w+)?\.utf8=", line):
                text = line
                break
    if text:
        text = re.split(r"(?<=[.!?])\s+", text)[0].rstrip(".")  # the first sentence
        first = text.split()[0]
        if not (len(first) > 1 and first.isupper()):  # keep acronyms ("US"), lower the rest
            text = text[0].lower() + text[1:]
    else:
        text = clean_title(image.stem.replace("_mirror", ""))
    text = text or "stamp"
    return f"{label}: {text}" if label else text


@dataclass(frozen=True)
class Item:
    """One non-emoji corpus image before decoding."""

    key: str
    path: Path
    caption: str
    source: str  # "openclipart" | "tuxpaint"
    licence: str


def discover_openclipart(root: Path) -> list[Item]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    return [
        Item(f"oca-{i:06d}", p, clean_oca_caption(p.relative_to(root).as_posix()), "openclipart", "public-domain")
        for i, p in enumerate(files)
    ]


def discover_tuxpaint(root: Path) -> list[Item]:
    """Stamps (PNG, or SVG when there is no PNG of the same stem); pre-mirrored copies left out."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".svg") and p.is_file())
    stems: dict[Path, Path] = {}
    for p in files:
        if p.stem.endswith("_mirror"):
            continue
        stem = p.with_suffix("")
        if stem not in stems or p.suffix.lower() == ".png":
            stems[stem] = p
    chosen = sorted(stems.values())
    return [Item(f"tux-{i:05d}", p, tux_caption(p, root), "tuxpaint", "GPL-2.0") for i, p in enumerate(chosen)]


def _load(job: tuple[str, str, int]) -> tuple[str, bytes | None, str | None]:
    key, path, size = job
    try:
        return key, load_any(Path(path), size), None
    except Exception as e:  # any decoder failure is a skip, reported by the caller
        # name the file, not its absolute path: the counts must not depend on where assets live
        return key, None, f"{type(e).__name__}: {str(e).replace(path, Path(path).name)[:160]}"


def load_images(items: Iterable[Item], size: int, processes: int = 2) -> tuple[dict[str, bytes], dict[str, str]]:
    """Decode every item to a `size` px RGB PNG; returns (key -> png, key -> error for skips)."""
    jobs = [(it.key, str(it.path), size) for it in items]
    images: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    if processes > 1 and len(jobs) > 64:
        with Pool(processes) as pool:
            results = list(pool.imap(_load, jobs, chunksize=32))
    else:
        results = [_load(j) for j in jobs]
    for key, png, err in results:
        if png is None:
            errors[key] = err or "unknown error"
        else:
            images[key] = png
    return images, errors
