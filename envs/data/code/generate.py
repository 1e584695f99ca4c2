"""Regenerate ``problems.jsonl``: the stdin/stdout problems shipped with ``rlrf/Code-v0``.

Each problem below has a statement, a reference solution and test inputs (hand-written edge
cases plus seeded random ones). The expected outputs are computed by running the reference
solution, so they always agree with it. Run from the repository root::

    python envs/data/code/generate.py

Difficulty is graded for a tiny policy: ``easy`` problems are one or two lines of Python,
``medium`` a short loop, ``hard`` need the right algorithm to pass the larger tests.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("problems.jsonl")
R = random.Random(20260128)


def ints(n: int, lo: int, hi: int) -> str:
    """``n`` random integers in ``[lo, hi]``, space-separated."""
    return " ".join(str(R.randint(lo, hi)) for _ in range(n))


def word(lo: int = 1, hi: int = 10, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    """A random word."""
    return "".join(R.choice(alphabet) for _ in range(R.randint(lo, hi)))


def listed(values: list[str]) -> str:
    """``n`` on the first line, the values on the second."""
    return f"{len(values)}\n{' '.join(values)}\n"


def grid(rows: int, cols: int, p: float) -> str:
    """A random grid of ``#`` (probability ``p``) and ``.``."""
    lines = ["".join("#" if R.random() < p else "." for _ in range(cols)) for _ in range(rows)]
    return f"{rows} {cols}\n" + "\n".join(lines) + "\n"


def maze(rows: int, cols: int, p: float) -> str:
    """A random maze with a start ``S`` and an end ``E``."""
    cells = [["#" if R.random() < p else "." for _ in range(cols)] for _ in range(rows)]
    cells[0][0], cells[rows - 1][cols - 1] = "S", "E"
    return f"{rows} {cols}\n" + "\n".join("".join(r) for r in cells) + "\n"


P: list[dict[str, Any]] = []


def problem(
    pid: str, title: str, difficulty: str, statement: str, solution: str, inputs: list[str]
) -> None:
    """Declare one problem."""
    P.append(
        {
            "id": pid,
            "title": title,
            "difficulty": difficulty,
            "statement": statement.strip(),
            "solution": solution.strip() + "\n",
            "inputs": [i if i.endswith("\n") or i == "" else i + "\n" for i in inputs],
        }
    )


# ---- easy -------------------------------------------------------------------------------------

problem(
    "hello-world",
    "Hello, World",
    "easy",
    "Print the text `Hello, World!` (without the quotes). There is no input.",
    'print("Hello, World!")',
    ["", ""],
)
problem(
    "sum-two",
    "Sum of two integers",
    "easy",
    "The input is one line with two integers a and b. Print their sum a + b.",
    "a, b = map(int, input().split())\nprint(a + b)",
    [
        "2 3",
        "0 0",
        "-5 7",
        "1000000000 1000000000",
        "-3 -4",
        *[ints(2, -1000, 1000) for _ in range(3)],
    ],
)
problem(
    "double",
    "Double it",
    "easy",
    "The input is one integer n. Print 2 * n.",
    "print(2 * int(input()))",
    ["4", "0", "-7", "123456789", *[ints(1, -(10**6), 10**6) for _ in range(2)]],
)
problem(
    "square",
    "Square",
    "easy",
    "The input is one integer n. Print n * n.",
    "n = int(input())\nprint(n * n)",
    ["3", "0", "-4", "100000", *[ints(1, -1000, 1000) for _ in range(2)]],
)
problem(
    "greet",
    "Greeting",
    "easy",
    "The input is one line with a name. Print `Hello, NAME!` where NAME is the name.",
    'print(f"Hello, {input().strip()}!")',
    ["Alice", "Bob", "x", *[word(3, 8).capitalize() for _ in range(3)]],
)
problem(
    "max-two",
    "The larger number",
    "easy",
    "The input is one line with two integers a and b. Print the larger of the two.",
    "a, b = map(int, input().split())\nprint(max(a, b))",
    ["3 9", "9 3", "5 5", "-1 -8", *[ints(2, -100, 100) for _ in range(3)]],
)
problem(
    "min-three",
    "The smallest of three",
    "easy",
    "The input is one line with three integers. Print the smallest of them.",
    "print(min(map(int, input().split())))",
    ["4 2 8", "1 1 1", "-5 0 5", "7 -7 0", *[ints(3, -100, 100) for _ in range(3)]],
)
problem(
    "even-odd",
    "Even or odd",
    "easy",
    "The input is one integer n. Print `even` if n is even and `odd` if it is odd.",
    'print("even" if int(input()) % 2 == 0 else "odd")',
    ["4", "7", "0", "-3", "1000001", *[ints(1, -1000, 1000) for _ in range(2)]],
)
problem(
    "sign",
    "Sign of a number",
    "easy",
    "The input is one integer n. Print `positive` if n > 0, `negative` if n < 0 and `zero` "
    "if n = 0.",
    'n = int(input())\nprint("positive" if n > 0 else "negative" if n < 0 else "zero")',
    ["5", "-2", "0", "1", "-1000000"],
)
problem(
    "abs-value",
    "Absolute value",
    "easy",
    "The input is one integer n. Print its absolute value.",
    "print(abs(int(input())))",
    ["-5", "5", "0", "-123456", *[ints(1, -1000, 1000) for _ in range(2)]],
)
problem(
    "string-length",
    "Length of a string",
    "easy",
    "The input is one line holding a word. Print the number of characters in the word.",
    "print(len(input().strip()))",
    ["hello", "a", "abcdefghijklmnopqrstuvwxyz", *[word(1, 30) for _ in range(3)]],
)
problem(
    "reverse-string",
    "Reverse a string",
    "easy",
    "The input is one line holding a word. Print the word reversed.",
    "print(input().strip()[::-1])",
    ["hello", "a", "racecar", "ab", *[word(2, 20) for _ in range(3)]],
)
problem(
    "uppercase",
    "Shout",
    "easy",
    "The input is one line holding a word of lowercase letters. Print it in uppercase.",
    "print(input().strip().upper())",
    ["hello", "z", "python", *[word(1, 15) for _ in range(3)]],
)
problem(
    "count-to-n",
    "Count to n",
    "easy",
    "The input is one integer n (1 <= n <= 1000). Print the numbers 1, 2, ..., n, one per line.",
    "for i in range(1, int(input()) + 1):\n    print(i)",
    ["3", "1", "10", *[ints(1, 1, 1000) for _ in range(2)]],
)
problem(
    "sum-list",
    "Sum of a list",
    "easy",
    "The first line holds n (1 <= n <= 1000); the second line holds n integers. Print their sum.",
    "input()\nprint(sum(map(int, input().split())))",
    [
        "3\n1 2 3",
        "1\n-5",
        "4\n10 -10 10 -10",
        *[listed(ints(R.randint(1, 1000), -1000, 1000).split()) for _ in range(3)],
    ],
)
problem(
    "repeat-word",
    "Repeat a word",
    "easy",
    "The input is one line with a word w and an integer k (1 <= k <= 100). Print w k times "
    "on one line, separated by single spaces.",
    "w, k = input().split()\nprint(' '.join([w] * int(k)))",
    ["hi 3", "a 1", "echo 5", *[f"{word(1, 6)} {R.randint(1, 100)}" for _ in range(3)]],
)

# ---- medium -----------------------------------------------------------------------------------

problem(
    "fizzbuzz",
    "FizzBuzz",
    "medium",
    "The input is one integer n (1 <= n <= 1000). For each i from 1 to n print one line: "
    "`FizzBuzz` if i is divisible by 15, `Fizz` if by 3, `Buzz` if by 5, else i itself.",
    "for i in range(1, int(input()) + 1):\n"
    "    print('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 "
    "else i)",
    ["5", "15", "1", "100", *[ints(1, 1, 1000) for _ in range(2)]],
)
problem(
    "count-vowels",
    "Count vowels",
    "medium",
    "The input is one line of lowercase letters and spaces. Print how many of its letters are "
    "vowels (a, e, i, o, u).",
    "print(sum(c in 'aeiou' for c in input()))",
    [
        "hello world",
        "rhythm",
        "aeiou",
        "a",
        *[" ".join(word() for _ in range(5)) for _ in range(3)],
    ],
)
problem(
    "palindrome",
    "Palindrome",
    "medium",
    "The input is one word of lowercase letters. Print `yes` if it reads the same backwards, "
    "otherwise `no`.",
    "s = input().strip()\nprint('yes' if s == s[::-1] else 'no')",
    [
        "racecar",
        "hello",
        "a",
        "abba",
        "abca",
        *[(lambda w: w + w[::-1])(word(1, 8)) for _ in range(2)],
        *[word(2, 8) for _ in range(2)],
    ],
)
problem(
    "factorial",
    "Factorial",
    "medium",
    "The input is one integer n (0 <= n <= 50). Print n! (the product 1 * 2 * ... * n; 0! = 1).",
    "import math\nprint(math.factorial(int(input())))",
    ["5", "0", "1", "20", "50", *[ints(1, 2, 50) for _ in range(2)]],
)
problem(
    "fibonacci",
    "Fibonacci number",
    "medium",
    "The input is one integer n (0 <= n <= 90). Print the n-th Fibonacci number F(n), where "
    "F(0) = 0, F(1) = 1 and F(n) = F(n-1) + F(n-2).",
    "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
    ["10", "0", "1", "2", "90", *[ints(1, 3, 90) for _ in range(2)]],
)
problem(
    "gcd",
    "Greatest common divisor",
    "medium",
    "The input is one line with two positive integers a and b (up to 10^18). Print their "
    "greatest common divisor.",
    "import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))",
    [
        "12 18",
        "7 13",
        "5 5",
        "1000000000000000000 999999999999999999",
        *[f"{R.randint(1, 10**6) * 12} {R.randint(1, 10**6) * 18}" for _ in range(3)],
    ],
)
problem(
    "is-prime",
    "Prime test",
    "medium",
    "The input is one integer n (1 <= n <= 10^12). Print `yes` if n is prime, otherwise `no`.",
    "n = int(input())\n"
    "ok = n >= 2\n"
    "i = 2\n"
    "while i * i <= n and ok:\n"
    "    if n % i == 0:\n"
    "        ok = False\n"
    "    i += 1\n"
    "print('yes' if ok else 'no')",
    ["7", "1", "2", "9", "999999000001", "999999999989", *[ints(1, 2, 10**6) for _ in range(3)]],
)
problem(
    "reverse-words",
    "Reverse the words",
    "medium",
    "The input is one line of words separated by single spaces. Print the words in reverse "
    "order, separated by single spaces.",
    "print(' '.join(input().split()[::-1]))",
    [
        "the quick brown fox",
        "hello",
        "a b",
        *[" ".join(word() for _ in range(R.randint(2, 9))) for _ in range(3)],
    ],
)
problem(
    "sort-numbers",
    "Sort numbers",
    "medium",
    "The first line holds n (1 <= n <= 10^5); the second holds n integers. Print them in "
    "increasing order on one line, separated by spaces.",
    "input()\nprint(*sorted(map(int, input().split())))",
    [
        "5\n3 1 4 1 5",
        "1\n42",
        "3\n-1 -2 -3",
        *[listed(ints(R.randint(2, 2000), -(10**6), 10**6).split()) for _ in range(3)],
    ],
)
problem(
    "second-largest",
    "Second largest",
    "medium",
    "The first line holds n (2 <= n <= 10^5); the second holds n integers with at least two "
    "different values. Print the second largest distinct value.",
    "input()\nprint(sorted(set(map(int, input().split())))[-2])",
    [
        "5\n3 1 4 1 5",
        "2\n1 2",
        "4\n7 7 7 3",
        "3\n-1 -1 -5",
        *[listed(ints(R.randint(2, 500), -1000, 1000).split()) for _ in range(3)],
    ],
)
problem(
    "digit-sum",
    "Digit sum",
    "medium",
    "The input is one non-negative integer with up to 1000 digits. Print the sum of its digits.",
    "print(sum(int(c) for c in input().strip()))",
    [
        "12345",
        "0",
        "9",
        "1" * 1000,
        *[str(R.randint(0, 10 ** R.randint(1, 300))) for _ in range(3)],
    ],
)
problem(
    "binary",
    "Binary representation",
    "medium",
    "The input is one integer n (0 <= n <= 10^18). Print n in binary, without leading zeros.",
    "print(bin(int(input()))[2:])",
    ["5", "0", "1", "1024", "1000000000000000000", *[ints(1, 0, 10**9) for _ in range(2)]],
)
problem(
    "anagram",
    "Anagrams",
    "medium",
    "The input is one line with two words of lowercase letters. Print `yes` if one is an "
    "anagram of the other (the same letters, rearranged), otherwise `no`.",
    "a, b = input().split()\nprint('yes' if sorted(a) == sorted(b) else 'no')",
    [
        "listen silent",
        "abc abd",
        "a a",
        "ab abc",
        "aab abb",
        *[(lambda w: f"{w} {''.join(R.sample(w, len(w)))}")(word(2, 9)) for _ in range(2)],
    ],
)
problem(
    "run-length",
    "Run-length encoding",
    "medium",
    "The input is one word of lowercase letters. Replace each run of equal letters by the "
    "letter followed by the run's length, e.g. `aaabcc` becomes `a3b1c2`. Print the result.",
    "import itertools\n"
    "print(''.join(k + str(len(list(g))) for k, g in itertools.groupby(input().strip())))",
    ["aaabcc", "a", "abc", "zzzzzzzzzzzz", *[word(5, 30, "ab") for _ in range(3)]],
)
problem(
    "most-frequent-word",
    "Most frequent word",
    "medium",
    "The input is one line of lowercase words separated by spaces. Print the word that occurs "
    "most often; if several do, print the alphabetically smallest of them.",
    "from collections import Counter\n"
    "c = Counter(input().split())\n"
    "best = max(c.values())\n"
    "print(min(w for w in c if c[w] == best))",
    [
        "b a b a c",
        "hello",
        "x y z",
        "the cat and the hat",
        *[" ".join(word(1, 2, "abc") for _ in range(20)) for _ in range(3)],
    ],
)
problem(
    "count-primes",
    "Counting primes",
    "medium",
    "The input is one integer n (1 <= n <= 2 * 10^6). Print how many primes are <= n.",
    "n = int(input())\n"
    "sieve = bytearray([1]) * (n + 1)\n"
    "sieve[0:2] = b'\\x00\\x00'[: n + 1]\n"
    "for i in range(2, int(n ** 0.5) + 1):\n"
    "    if sieve[i]:\n"
    "        sieve[i * i :: i] = bytearray(len(range(i * i, n + 1, i)))\n"
    "print(sum(sieve))",
    ["10", "1", "2", "100", "2000000", *[ints(1, 3, 10**5) for _ in range(2)]],
)

# ---- hard -------------------------------------------------------------------------------------

problem(
    "balanced-brackets",
    "Balanced brackets",
    "hard",
    "The input is one line of the characters `()[]{}`. Print `yes` if the brackets are "
    "balanced and properly nested, otherwise `no`.",
    "s = input().strip()\n"
    "pairs = {')': '(', ']': '[', '}': '{'}\n"
    "stack = []\n"
    "ok = True\n"
    "for c in s:\n"
    "    if c in '([{':\n"
    "        stack.append(c)\n"
    "    elif not stack or stack.pop() != pairs[c]:\n"
    "        ok = False\n"
    "        break\n"
    "print('yes' if ok and not stack else 'no')",
    ["([]{})", "([)]", "((", "()", ")(", "{[()()]}", *[word(2, 30, "()[]{}") for _ in range(3)]],
)
problem(
    "max-subarray",
    "Maximum subarray sum",
    "hard",
    "The first line holds n (1 <= n <= 2 * 10^5); the second holds n integers. Print the "
    "largest sum of a non-empty contiguous subarray.",
    "input()\n"
    "best = cur = None\n"
    "for x in map(int, input().split()):\n"
    "    cur = x if cur is None or cur < 0 else cur + x\n"
    "    best = cur if best is None or cur > best else best\n"
    "print(best)",
    [
        "5\n-2 1 -3 4 -1",
        "1\n-7",
        "3\n1 2 3",
        "4\n-3 -1 -4 -2",
        *[listed(ints(R.randint(5, 100), -50, 50).split()) for _ in range(2)],
        listed(ints(50000, -(10**4), 10**4).split()),
    ],
)
problem(
    "lis",
    "Longest increasing subsequence",
    "hard",
    "The first line holds n (1 <= n <= 10^5); the second holds n integers. Print the length "
    "of the longest strictly increasing subsequence.",
    "import bisect\n"
    "input()\n"
    "tails = []\n"
    "for x in map(int, input().split()):\n"
    "    i = bisect.bisect_left(tails, x)\n"
    "    tails[i:i + 1] = [x]\n"
    "print(len(tails))",
    [
        "6\n10 9 2 5 3 7",
        "1\n5",
        "4\n1 1 1 1",
        "5\n1 2 3 4 5",
        *[listed(ints(R.randint(5, 50), 0, 30).split()) for _ in range(2)],
        listed(ints(50000, 0, 10**9).split()),
    ],
)
problem(
    "coin-change",
    "Coin change",
    "hard",
    "The first line holds n and a (1 <= n <= 20, 0 <= a <= 10^4); the second holds n coin "
    "values. Print the fewest coins (each value usable any number of times) that sum to "
    "exactly a, or -1 if it is impossible.",
    "n, a = map(int, input().split())\n"
    "coins = list(map(int, input().split()))\n"
    "INF = float('inf')\n"
    "best = [0] + [INF] * a\n"
    "for v in range(1, a + 1):\n"
    "    for c in coins:\n"
    "        if c <= v and best[v - c] + 1 < best[v]:\n"
    "            best[v] = best[v - c] + 1\n"
    "print(best[a] if best[a] != INF else -1)",
    [
        "3 11\n1 2 5",
        "1 3\n2",
        "2 0\n4 7",
        "3 6\n1 3 4",
        "2 7\n2 4",
        *[f"{k} {R.randint(100, 10000)}\n{ints(k, 3, 60)}" for k in (3, 8)],
    ],
)
problem(
    "islands",
    "Counting islands",
    "hard",
    "The first line holds r and c (1 <= r, c <= 300); the next r lines hold c characters each, "
    "`#` for land and `.` for water. Print the number of islands: groups of land cells "
    "connected up, down, left or right.",
    "import sys\n"
    "data = sys.stdin.read().split()\n"
    "r, c = int(data[0]), int(data[1])\n"
    "g = [list(row) for row in data[2:2 + r]]\n"
    "count = 0\n"
    "for i in range(r):\n"
    "    for j in range(c):\n"
    "        if g[i][j] == '#':\n"
    "            count += 1\n"
    "            stack = [(i, j)]\n"
    "            g[i][j] = '.'\n"
    "            while stack:\n"
    "                y, x = stack.pop()\n"
    "                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):\n"
    "                    if 0 <= ny < r and 0 <= nx < c and g[ny][nx] == '#':\n"
    "                        g[ny][nx] = '.'\n"
    "                        stack.append((ny, nx))\n"
    "print(count)",
    [
        "3 4\n##..\n#..#\n..##",
        "1 1\n.",
        "1 1\n#",
        "2 2\n#.\n.#",
        grid(10, 12, 0.4),
        grid(30, 30, 0.5),
        grid(300, 300, 0.6),
    ],
)
problem(
    "maze",
    "Shortest path in a maze",
    "hard",
    "The first line holds r and c (2 <= r, c <= 300); the next r lines hold the maze: `.` is "
    "free, `#` is a wall, `S` is the start and `E` the exit. Moving up, down, left or right "
    "costs one step. Print the fewest steps from S to E, or -1 if E cannot be reached.",
    "import sys\n"
    "from collections import deque\n"
    "data = sys.stdin.read().split()\n"
    "r, c = int(data[0]), int(data[1])\n"
    "g = data[2:2 + r]\n"
    "start = next((i, row.index('S')) for i, row in enumerate(g) if 'S' in row)\n"
    "dist = {start: 0}\n"
    "q = deque([start])\n"
    "ans = -1\n"
    "while q:\n"
    "    y, x = q.popleft()\n"
    "    if g[y][x] == 'E':\n"
    "        ans = dist[(y, x)]\n"
    "        break\n"
    "    for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):\n"
    "        if 0 <= ny < r and 0 <= nx < c and g[ny][nx] != '#' and (ny, nx) not in dist:\n"
    "            dist[(ny, nx)] = dist[(y, x)] + 1\n"
    "            q.append((ny, nx))\n"
    "print(ans)",
    [
        "3 3\nS..\n.#.\n..E",
        "2 2\nS#\n#E",
        "2 3\nS.E\n...",
        "3 4\nS#..\n.#.#\n...E",
        maze(10, 10, 0.25),
        maze(40, 60, 0.3),
        maze(300, 300, 0.2),
    ],
)
problem(
    "merge-intervals",
    "Merging intervals",
    "hard",
    "The first line holds n (1 <= n <= 10^5); each of the next n lines holds an interval "
    "`l r` (l <= r). Merge the intervals that overlap or touch, and print the merged ones in "
    "increasing order, one `l r` per line.",
    "import sys\n"
    "data = list(map(int, sys.stdin.read().split()))\n"
    "iv = sorted(zip(data[1::2], data[2::2]))\n"
    "out = []\n"
    "for l, r in iv:\n"
    "    if out and l <= out[-1][1]:\n"
    "        out[-1][1] = max(out[-1][1], r)\n"
    "    else:\n"
    "        out.append([l, r])\n"
    "print('\\n'.join(f'{l} {r}' for l, r in out))",
    [
        "3\n1 3\n2 6\n8 10",
        "1\n5 5",
        "2\n1 2\n2 3",
        "3\n5 6\n1 2\n3 4",
        *[
            (
                lambda n: (
                    f"{n}\n"
                    + "\n".join(
                        (lambda a: f"{a} {a + R.randint(0, 20)}")(R.randint(0, 200))
                        for _ in range(n)
                    )
                )
            )(R.randint(5, 40))
            for _ in range(3)
        ],
    ],
)
problem(
    "lcs",
    "Longest common subsequence",
    "hard",
    "The input is two lines, each a word of lowercase letters (length up to 1000). Print the "
    "length of their longest common subsequence.",
    "a = input().strip()\n"
    "b = input().strip()\n"
    "prev = [0] * (len(b) + 1)\n"
    "for ch in a:\n"
    "    cur = [0]\n"
    "    for j, d in enumerate(b):\n"
    "        cur.append(prev[j] + 1 if ch == d else max(prev[j + 1], cur[j]))\n"
    "    prev = cur\n"
    "print(prev[-1])",
    [
        "abcde\nace",
        "abc\ndef",
        "a\na",
        "abcba\nabcbcba",
        *[f"{word(5, 40, 'abc')}\n{word(5, 40, 'abc')}" for _ in range(2)],
        f"{word(1000, 1000, 'abcd')}\n{word(1000, 1000, 'abcd')}",
    ],
)
problem(
    "pair-sum",
    "Pairs with a given sum",
    "hard",
    "The first line holds n and k (1 <= n <= 2 * 10^5); the second holds n integers. Print "
    "how many pairs of positions i < j have a_i + a_j = k.",
    "from collections import Counter\n"
    "n, k = map(int, input().split())\n"
    "seen = Counter()\n"
    "count = 0\n"
    "for x in map(int, input().split()):\n"
    "    count += seen[k - x]\n"
    "    seen[x] += 1\n"
    "print(count)",
    [
        "4 5\n1 4 2 3",
        "1 2\n1",
        "4 2\n1 1 1 1",
        "3 0\n-1 1 0",
        *[f"30 10\n{ints(30, 0, 10)}" for _ in range(2)],
        f"50000 0\n{ints(50000, -1000, 1000)}",
    ],
)


def run(solution: str, stdin: str) -> str:
    """Run a reference solution (trusted code, written above) and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", solution],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def main() -> None:
    """Compute the expected outputs and write ``problems.jsonl``."""
    ids = [p["id"] for p in P]
    assert len(ids) == len(set(ids)), "duplicate problem ids"
    with OUT.open("w") as f:
        for p in P:
            tests = [
                {"input": i, "output": run(p["solution"], i), "testtype": "stdin"}
                for i in p["inputs"]
            ]
            n_public = 2 if len(tests) >= 3 else 1  # LCB-style: the examples are public
            example = tests[0]
            shown_in = example["input"] if example["input"] else "(no input)\n"
            statement = (
                f"{p['statement']}\n\nExample input:\n{shown_in}\nExample output:\n"
                f"{example['output']}"
            )
            record = {
                "question_id": p["id"],
                "question_title": p["title"],
                "question_content": statement,
                "platform": "rlrf",
                "difficulty": p["difficulty"],
                "starter_code": "",
                "public_test_cases": json.dumps(tests[:n_public]),
                "private_test_cases": json.dumps(tests[n_public:]),
                "metadata": "{}",
                "reference_solution": p["solution"],
            }
            f.write(json.dumps(record) + "\n")
    print(f"wrote {len(P)} problems to {OUT}")


if __name__ == "__main__":
    main()
