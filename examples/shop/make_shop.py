"""Writes the example shop of the README's "Bring your own data": orders.csv (customers' dated orders of
SKUs) and products.csv (each SKU's title and colour). Each customer orders 5 to 9 different SKUs, 4 of them
in their favourite colour, so an item's text (its colour) tells who will order it.

    python examples/shop/make_shop.py      # rewrites the two CSV files next to this script
"""

import random
from datetime import datetime, timedelta
from pathlib import Path

COLOURS = ["red", "blue", "green", "black", "white"]
KINDS = ["shirt", "dress", "scarf", "jacket", "sock", "hat"]


def main() -> None:
    rng = random.Random(7)
    here = Path(__file__).parent
    skus = [(f"SKU-{c[:3].upper()}-{k[:3].upper()}", k, c) for c in COLOURS for k in KINDS]
    with (here / "products.csv").open("w") as f:
        f.write("sku,title,colour\n")
        for sku, kind, colour in skus:
            f.write(f"{sku},{colour.title()} {kind},{colour}\n")
    start = datetime(2024, 3, 1)
    with (here / "orders.csv").open("w") as f:
        f.write("customer,sku,ordered_at\n")
        for c in range(80):
            colour = COLOURS[c % len(COLOURS)]
            mine = [s for s in skus if s[2] == colour]
            others = [s for s in skus if s[2] != colour]
            basket = rng.sample(mine, 4) + rng.sample(others, rng.randint(1, 5))
            for n, (sku, _, _) in enumerate(basket):
                when = start + timedelta(days=rng.randint(0, 90), minutes=n)
                f.write(f"C{1000 + c},{sku},{when.isoformat()}\n")


if __name__ == "__main__":
    main()
