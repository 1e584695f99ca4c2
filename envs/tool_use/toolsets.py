"""Executable tool backends for multi-turn tasks, and the one registry of them.

Tasks name a toolset with ``"toolset": "<name>"``; :func:`register_toolset` adds one. Two
ship here, stdlib only: ``weather`` (``get_weather``, ``convert_currency``) and
``inventory`` (``get_stock``, ``restock``, ``sell``, with state per episode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlrf.errors import ConfigError

__all__ = ["TOOLSETS", "Toolset", "register_toolset"]


@dataclass(frozen=True)
class Toolset:
    """Executable tool backends for multi-turn tasks.

    Attributes:
        specs: The functions' specs (``{"name", "description", "parameters"}``).
        factory: Returns fresh backends (name -> callable) with fresh state per episode.

    """

    specs: tuple[dict[str, Any], ...]
    factory: Callable[[], Mapping[str, Callable[..., Any]]]


#: Toolsets by name; tasks refer to them with ``"toolset": "<name>"``.
TOOLSETS: dict[str, Toolset] = {}


def register_toolset(name: str, toolset: Toolset, *, override: bool = False) -> None:
    """Make ``toolset`` available to tasks as ``"toolset": name``."""
    if name in TOOLSETS and not override:
        raise ConfigError(f"toolset {name!r} is already registered; pass override=True")
    TOOLSETS[name] = toolset


# ---- the shipped toolsets (stdlib only) ---------------------------------------------------

_WEATHER = {
    "paris": (20, "sunny"),
    "london": (15, "rainy"),
    "tokyo": (25, "cloudy"),
    "new york": (18, "windy"),
    "sydney": (22, "sunny"),
}


def _weather_backends() -> dict[str, Callable[..., Any]]:
    def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
        key = city.strip().lower()
        if key not in _WEATHER:
            raise KeyError(f"no weather data for {city!r}; known: {sorted(_WEATHER)}")
        temp, sky = _WEATHER[key]
        if unit == "fahrenheit":
            temp = round(temp * 9 / 5 + 32)
        return {"city": city, "temperature": temp, "unit": unit, "conditions": sky}

    def convert_currency(amount: float, source: str, target: str) -> dict[str, Any]:
        rates = {"USD": 1.0, "EUR": 0.5, "JPY": 100.0, "GBP": 0.25}
        if source not in rates or target not in rates:
            raise ValueError(f"unsupported currency; supported: {sorted(rates)}")
        return {"amount": round(amount / rates[source] * rates[target], 2), "currency": target}

    return {"get_weather": get_weather, "convert_currency": convert_currency}


def _inventory_backends() -> dict[str, Callable[..., Any]]:
    stock = {"apple": 10, "banana": 5, "cherry": 0}

    def get_stock(item: str) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        return {"item": item, "quantity": stock[item]}

    def restock(item: str, quantity: int) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        stock[item] += quantity
        return {"item": item, "quantity": stock[item]}

    def sell(item: str, quantity: int) -> dict[str, Any]:
        if item not in stock:
            raise KeyError(f"unknown item {item!r}; known: {sorted(stock)}")
        if stock[item] < quantity:
            raise ValueError(f"only {stock[item]} {item}(s) in stock, cannot sell {quantity}")
        stock[item] -= quantity
        return {"item": item, "quantity": stock[item]}

    return {"get_stock": get_stock, "restock": restock, "sell": sell}


def _spec(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict:
    return {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": props, "required": required},
    }


register_toolset(
    "weather",
    Toolset(
        specs=(
            _spec(
                "get_weather",
                "Current weather of a city.",
                {
                    "city": {"type": "string", "description": "City name, e.g. 'Paris'."},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                ["city"],
            ),
            _spec(
                "convert_currency",
                "Convert an amount of money between currencies (USD, EUR, JPY, GBP).",
                {
                    "amount": {"type": "number", "minimum": 0},
                    "source": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
                    "target": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
                },
                ["amount", "source", "target"],
            ),
        ),
        factory=_weather_backends,
    ),
)
register_toolset(
    "inventory",
    Toolset(
        specs=(
            _spec(
                "get_stock",
                "How many units of an item the shop has.",
                {"item": {"type": "string", "description": "Item name, e.g. 'apple'."}},
                ["item"],
            ),
            _spec(
                "restock",
                "Add units of an item to the stock; returns the new quantity.",
                {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                ["item", "quantity"],
            ),
            _spec(
                "sell",
                "Remove sold units of an item from the stock; returns the new quantity.",
                {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                ["item", "quantity"],
            ),
        ),
        factory=_inventory_backends,
    ),
)
