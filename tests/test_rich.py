"""Notebook parity: MIME bundles, display(), matplotlib, pandas, top-level await, variables."""

from __future__ import annotations

import base64
import json

from helpers import ApiClient

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_of(bundle: dict[str, str]) -> bytes:
    return base64.b64decode(bundle["image/png"])


def test_matplotlib_plot_is_a_png_display_and_does_not_repeat(api: ApiClient) -> None:
    data = api.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nNone")
    assert data["status"] == "ok", data["error"]
    assert len(data["displays"]) == 1
    assert png_of(data["displays"][0]).startswith(PNG_MAGIC)
    assert "Figure" in data["displays"][0]["text/plain"]
    assert api.run("x = 1")["displays"] == []


def test_plt_show_publishes_and_does_not_block(api: ApiClient) -> None:
    code = ("import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2]); plt.show()\n"
            "print('after show')\n"
            "plt.figure(); plt.bar([1], [2])")
    data = api.run(code, timeout=30)
    assert data["status"] == "ok"
    assert data["stdout"] == "after show\n"
    assert len(data["displays"]) == 2
    assert all(png_of(d).startswith(PNG_MAGIC) for d in data["displays"])
    assert "non-interactive" not in data["stderr"]


def test_displayed_figure_object(api: ApiClient) -> None:
    code = ("import matplotlib\nmatplotlib.use('Agg')\nfrom matplotlib.figure import Figure\n"
            "fig = Figure()\nfig.add_subplot().plot([0, 1])\ndisplay(fig)")
    data = api.run(code)
    assert png_of(data["displays"][0]).startswith(PNG_MAGIC)


def test_dataframe_result_has_html(api: ApiClient) -> None:
    data = api.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert "<table" in data["result"]["text/html"]
    assert "a" in data["result"]["text/plain"]


def test_numpy_array_keeps_its_repr(api: ApiClient) -> None:
    data = api.run("import numpy as np\nnp.arange(3)")
    assert data["result"] == {"text/plain": "array([0, 1, 2])"}


def test_two_displays_in_order(api: ApiClient) -> None:
    data = api.run("display('first')\nprint('between')\ndisplay({'n': 2})\nx = display(3)\nx")
    assert [d["text/plain"] for d in data["displays"]] == ["'first'", "{'n': 2}", "3"]
    assert data["result"] is None  # display() returns None
    assert data["stdout"] == "between\n"


def test_custom_repr_methods(api: ApiClient) -> None:
    code = (
        "class Rich:\n"
        "    def _repr_html_(self):\n        return '<b>bold</b>'\n"
        "    def _repr_markdown_(self):\n        return '**bold**'\n"
        "    def _repr_svg_(self):\n        return '<svg></svg>'\n"
        "    def _repr_png_(self):\n        return b'\\x89PNG\\r\\n\\x1a\\nfake'\n"
        "    def _repr_json_(self):\n        return {'k': [1, 2]}\n"
        "    def _repr_latex_(self):\n        return '$x$'\n"
        "    def __repr__(self):\n        return 'Rich()'\n"
        "Rich()"
    )
    result = api.run(code)["result"]
    assert result["text/plain"] == "Rich()"
    assert result["text/html"] == "<b>bold</b>"
    assert result["text/markdown"] == "**bold**"
    assert result["image/svg+xml"] == "<svg></svg>"
    assert base64.b64decode(result["image/png"]).startswith(PNG_MAGIC)
    assert result["application/json"] == {"k": [1, 2]}
    assert result["text/latex"] == "$x$"


def test_repr_mimebundle_is_used(api: ApiClient) -> None:
    code = ("class B:\n    def _repr_mimebundle_(self, include=None, exclude=None):\n"
            "        return {'text/html': '<i>b</i>', 'text/plain': 'B!'}\nB()")
    assert api.run(code)["result"] == {"text/html": "<i>b</i>", "text/plain": "B!"}


def test_raising_repr_is_contained(api: ApiClient) -> None:
    code = (
        "class Bad:\n"
        "    def _repr_html_(self):\n        raise RuntimeError('html broke')\n"
        "    def _repr_json_(self):\n        return {'not json': object()}\n"
        "    def _repr_markdown_(self):\n        return 'fine'\n"
        "    def __repr__(self):\n        raise ValueError('repr broke')\n"
        "Bad()"
    )
    data = api.run(code)
    assert data["status"] == "ok"
    result = data["result"]
    assert result["text/markdown"] == "fine"
    assert "text/html" not in result and "application/json" not in result
    assert "repr failed: ValueError: repr broke" in result["text/plain"]
    assert "_repr_html_ failed: RuntimeError: html broke" in data["stderr"]


def test_huge_repr_is_truncated_with_a_marker(api: ApiClient) -> None:
    data = api.run("class Huge:\n    def __repr__(self):\n        return 'z' * (50 * 1024 * 1024)\nHuge()")
    text = data["result"]["text/plain"]
    assert len(text) < 1024 * 1024 + 200
    assert text.startswith("zzz") and "more characters truncated" in text


def test_top_level_await(api: ApiClient) -> None:
    assert api.run("import asyncio\nawait asyncio.sleep(0)\n'awaited'")["result"] == {
        "text/plain": "'awaited'"}


def test_task_survives_into_the_next_cell(api: ApiClient) -> None:
    api.run("import asyncio\n"
            "ticks = []\n"
            "async def ticker():\n"
            "    while True:\n"
            "        ticks.append(1)\n"
            "        await asyncio.sleep(0.01)\n"
            "task = asyncio.get_running_loop().create_task(ticker())\n"
            "await asyncio.sleep(0.05)")
    data = api.run("before = len(ticks)\nawait asyncio.sleep(0.1)\n(task.done(), len(ticks) > before)")
    assert data["result"] == {"text/plain": "(False, True)"}
    api.run("task.cancel()")


def test_variables_show_shape_and_dtype(api: ApiClient) -> None:
    api.create("arrays")
    api.run("import numpy as np, pandas as pd\na = np.zeros((3, 4), dtype='float32')\n"
            "df = pd.DataFrame({'x': [1, 2]})\nn = 5", id="arrays")
    variables = {v["name"]: v for v in api.post("/env/get", json={"id": "arrays"}).get_json()["variables"]}
    assert variables["a"]["shape"] == [3, 4] and variables["a"]["dtype"] == "float32"
    assert variables["a"]["type"] == "ndarray"
    assert variables["df"]["shape"] == [2, 1]
    assert "shape" not in variables["n"]
    assert len(variables["a"]["repr"]) <= 300


def test_displays_stream_as_events(api: ApiClient) -> None:
    response = api.post("/execute", json={"code": "display('a')\nprint('b')\ndisplay('c')",
                                          "stream": True})
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    merged: list[tuple[str, str]] = []
    for e in events[:-1]:
        item = (e["event"], e["data"]["text/plain"] if e["event"] == "display" else e["text"])
        if merged and item[0] == "stdout" == merged[-1][0]:
            merged[-1] = ("stdout", merged[-1][1] + item[1])  # a print may arrive in pieces
        else:
            merged.append(item)
    assert merged == [("display", "'a'"), ("stdout", "b\n"), ("display", "'c'")]


def test_displays_keep_their_place_among_printed_text(api: ApiClient) -> None:
    code = "for i in range(50):\n    print(i)\n    display(i)"
    response = api.post("/execute", json={"code": code, "stream": True})
    events = [json.loads(line) for line in response.get_data(as_text=True).splitlines()][:-1]
    order: list[tuple[str, str]] = []
    text = ""
    for e in events + [{"event": "display", "data": {"text/plain": "end"}}]:
        if e["event"] == "display":
            order += [("p", line) for line in text.splitlines()]
            order.append(("d", e["data"]["text/plain"]))
            text = ""
        else:
            text += e["text"]
    assert order[:-1] == [x for i in range(50) for x in (("p", str(i)), ("d", str(i)))]


def test_optional_libraries_are_not_loaded_by_the_server(papi: ApiClient) -> None:
    data = papi.run("import sys\nsorted(m for m in ('matplotlib', 'pandas', 'numpy') if m in sys.modules)")
    assert data["result"] == {"text/plain": "[]"}
