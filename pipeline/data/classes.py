"""Readable class names for the emoji subcategories, and the prompt templates.

Names are hand-written noun phrases that read well after "the" ("a picture of the ground vehicle",
"... of the sky and weather", "... of the clothing"); the templates therefore use "the", which
fits both count nouns and mass nouns, where "a {c}" would not ("a clothing").
"""
from __future__ import annotations

# Domain-neutral: no template names a style ("photo", "sketch", "emoji"), and none matches the
# corpus caption format ("name: tags"), so no style is favoured by the prompt itself. The same list
# serves the zero-shot head, FLYP's class prompts and CLIP_benchmark.
TEMPLATES = [
    "a picture of the {c}.",
    "an icon of the {c}.",
    "a drawing of the {c}.",
    "a small image of the {c}.",
    "the {c}.",
]


CLASS_NAMES = {
    # Smileys & Emotion
    "face-smiling": "smiling face",
    "face-affection": "affectionate face",
    "face-tongue": "face with tongue out",
    "face-hand": "face with a hand",
    "face-neutral-skeptical": "neutral or skeptical face",
    "face-sleepy": "sleepy face",
    "face-unwell": "sick face",
    "face-hat": "face with a hat",
    "face-glasses": "face with glasses",
    "face-concerned": "worried face",
    "face-negative": "angry face",
    "face-costume": "monster or costume face",
    "cat-face": "cat face",
    "monkey-face": "monkey face",
    "heart": "heart",
    "emotion": "comic emotion symbol",
    # People & Body
    "hand-fingers-open": "open hand",
    "hand-fingers-partial": "hand sign with fingers",
    "hand-single-finger": "pointing finger",
    "hand-fingers-closed": "thumb or fist",
    "hands": "pair of hands",
    "hand-prop": "hand holding something",
    "body-parts": "body part",
    "person": "person",
    "person-gesture": "person making a gesture",
    "person-role": "person with a job or role",
    "person-fantasy": "fantasy character",
    "person-activity": "person doing an activity",
    "person-sport": "person playing a sport",
    "person-resting": "person resting",
    "family": "family or couple",
    "person-symbol": "silhouette or footprints",
    # Animals & Nature
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-amphibian": "frog",
    "animal-reptile": "reptile",
    "animal-marine": "sea animal",
    "animal-bug": "bug",
    "plant-flower": "flower",
    "plant-other": "plant",
    # Food & Drink
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-prepared": "prepared food",
    "food-asian": "asian food",
    "food-marine": "seafood",
    "food-sweet": "dessert or sweet",
    "drink": "drink",
    "dishware": "dishware",
    # Travel & Places
    "place-map": "map or globe",
    "place-geographic": "landscape",
    "place-building": "building",
    "place-religious": "place of worship",
    "place-other": "outdoor scene",
    "transport-ground": "ground vehicle",
    "transport-water": "boat",
    "transport-air": "aircraft",
    "hotel": "hotel item",
    "time": "clock or timer",
    "sky & weather": "sky and weather",
    # Activities
    "event": "celebration item",
    "award-medal": "medal or trophy",
    "sport": "sports equipment",
    "game": "game or toy",
    "arts & crafts": "arts and crafts",
    # Objects
    "clothing": "clothing",
    "sound": "speaker or bell",
    "music": "music item",
    "musical-instrument": "musical instrument",
    "phone": "phone",
    "computer": "computer equipment",
    "light & video": "camera, screen or lamp",
    "book-paper": "book or paper",
    "money": "money",
    "mail": "mail",
    "writing": "writing tool",
    "office": "office supply",
    "lock": "lock or key",
    "tool": "tool",
    "science": "science equipment",
    "medical": "medical item",
    "household": "household item",
    "other-object": "miscellaneous object",
    # Symbols
    "transport-sign": "public information sign",
    "warning": "warning sign",
    "arrow": "arrow",
    "religion": "religious symbol",
    "zodiac": "zodiac sign",
    "av-symbol": "media control button",
    "gender": "gender symbol",
    "math": "math symbol",
    "punctuation": "punctuation mark",
    "currency": "currency symbol",
    "other-symbol": "miscellaneous symbol",
    "keycap": "number key",
    "alphanum": "letters in a box",
    "geometric": "geometric shape",
}


def class_name(subcategory: str) -> str:
    """The readable name of a subcategory; an unknown one gets its slug made readable."""
    name = CLASS_NAMES.get(subcategory)
    if name is None:
        name = subcategory.replace("&", "and").replace("-", " ")
    return " ".join(name.split())
