"""Prompt templates for class names: CoOp's per-dataset ones, and the default."""

DEFAULT_TEMPLATES = ["a photo of a {}."]

# The single templates CoOp (Zhou et al., IJCV 2022) uses per benchmark, keyed by the Dassl dataset name.
COOP_TEMPLATES = {
    "OxfordPets": ["a photo of a {}, a type of pet."],
    "OxfordFlowers": ["a photo of a {}, a type of flower."],
    "FGVCAircraft": ["a photo of a {}, a type of aircraft."],
    "DescribableTextures": ["{} texture."],
    "EuroSAT": ["a centered satellite photo of {}."],
    "StanfordCars": ["a photo of a {}."],
    "Food101": ["a photo of {}, a type of food."],
    "SUN397": ["a photo of a {}."],
    "Caltech101": ["a photo of a {}."],
    "UCF101": ["a photo of a person doing {}."],
    "ImageNet": ["a photo of a {}."],
}


def resolve_templates(value, where: str) -> list[str]:
    """``value``: a list of templates, a CoOp dataset name, or None for the default."""
    if value is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(value, str):
        if value in COOP_TEMPLATES:
            return list(COOP_TEMPLATES[value])
        value = [value]
    if not isinstance(value, list) or not value or any(not isinstance(t, str) or "{}" not in t for t in value):
        raise ValueError(
            f"{where}: templates must be a CoOp dataset name ({', '.join(COOP_TEMPLATES)}) "
            f"or a list of strings with one `{{}}` each, got {value!r}."
        )
    return list(value)
