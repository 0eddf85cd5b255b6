"""The object catalogue of the tabletop world: categories (shape, size, physical roles) and colours.

Units are metres. ``half`` is the footprint half-extent (x, y); for cylinders both equal the radius.
``floor`` > 0 marks an open-top container: objects that fit inside rest ``floor`` above its bottom and
count as *in* it. ``fixture`` objects never move; ``graspable`` ones can be picked up. The drawer is the
one articulated object: it slides along -y out of its cabinet when pulled by its handle.
"""

from __future__ import annotations

from dataclasses import dataclass

BOX, CYLINDER = 0, 1


@dataclass(frozen=True)
class Category:
    name: str
    shape: int
    half: tuple[float, float]
    height: float
    graspable: bool = True
    fixture: bool = False
    floor: float = 0.0  # interior floor height of an open container (0 = not a container)
    wall: float = 0.0  # wall thickness of a container
    drawer: bool = False


CATEGORIES: tuple[Category, ...] = (
    Category("bowl", CYLINDER, (0.045, 0.045), 0.04, floor=0.008, wall=0.006),
    Category("plate", CYLINDER, (0.07, 0.07), 0.012),
    Category("mug", CYLINDER, (0.03, 0.03), 0.065),
    Category("bottle", CYLINDER, (0.022, 0.022), 0.11),
    Category("can", CYLINDER, (0.03, 0.03), 0.06),
    Category("cube", BOX, (0.022, 0.022), 0.044),
    Category("cheese box", BOX, (0.04, 0.028), 0.045),
    Category("cookie box", BOX, (0.055, 0.04), 0.03),
    Category("basket", BOX, (0.085, 0.07), 0.07, graspable=False, fixture=True, floor=0.01, wall=0.008),
    Category("tray", BOX, (0.09, 0.06), 0.015, graspable=False, fixture=True),
    Category("cabinet", BOX, (0.1, 0.08), 0.12, graspable=False, fixture=True),
    Category("drawer", BOX, (0.08, 0.07), 0.045, floor=0.008, wall=0.006, drawer=True),
)
CATEGORY_INDEX = {c.name: i for i, c in enumerate(CATEGORIES)}

COLORS: dict[str, tuple[int, int, int]] = {
    "black": (40, 40, 44),
    "white": (235, 235, 230),
    "red": (205, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (235, 205, 40),
    "orange": (240, 130, 30),
    "purple": (130, 50, 170),
    "brown": (120, 75, 40),
    "pink": (240, 130, 180),
    "cyan": (40, 200, 210),
    "grey": (130, 130, 130),
    "wood": (150, 105, 65),
    "wicker": (185, 150, 95),
}
COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}

DRAWER_MAX_OPEN = 0.12  # metres the drawer can slide out
DRAWER_OPEN_THRESHOLD = 0.08  # "opened" predicate
DRAWER_CLOSED_THRESHOLD = 0.015  # "closed" predicate


def category(name: str) -> Category:
    try:
        return CATEGORIES[CATEGORY_INDEX[name]]
    except KeyError:
        raise ValueError(f"unknown object category {name!r}; known: {sorted(CATEGORY_INDEX)}") from None


def color(name: str) -> tuple[int, int, int]:
    try:
        return COLORS[name]
    except KeyError:
        raise ValueError(f"unknown colour {name!r}; known: {sorted(COLORS)}") from None
