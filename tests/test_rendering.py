"""Model Markdown to the page's HTML: highlighting, the allow-list, the CSS that styles it."""

from __future__ import annotations

from pathlib import Path

from conversations import rendering
from conversations.rendering import client_policy, highlight_css, markdown_html, sanitize_html

STATIC = Path(rendering.__file__).parent / "static" / "conversations"


def test_a_fenced_block_with_a_known_language_is_highlighted_with_pygments_classes() -> None:
    html = markdown_html('```python\ndef greet(name):\n    return f"Hi {name}"\n```\n')
    assert html.startswith('<pre><code class="language-python">')
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">greet</span>' in html


def test_code_keeps_its_blank_lines_so_the_highlighted_block_is_as_tall_as_the_plain_one() -> None:
    html = markdown_html("```python\n\nx = 1\n\n```\n")
    assert html.startswith('<pre><code class="language-python">\n<span')
    assert html.endswith("\n\n</code></pre>\n")


def test_an_unknown_or_missing_language_stays_plain_and_escaped() -> None:
    for fence in ("```nosuchlanguage\n", "```\n"):
        html = markdown_html(fence + "<b>x</b> & y\n```\n")
        assert "<span" not in html
        assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in html


def test_the_model_cannot_make_spans_or_classes_of_its_own() -> None:
    html = markdown_html('<span class="k">x</span> <code class="evil">y</code>')
    assert html == (
        '<p>&lt;span class="k"&gt;x&lt;/span&gt; &lt;code class="evil"&gt;y&lt;/code&gt;</p>\n'
    )  # shown as text, never as elements
    # Even raw HTML that reached the sanitiser keeps only Pygments' token classes on spans.
    cleaned = sanitize_html('<span class="k evil" onclick="x()">a</span><div class="k">b</div>')
    assert cleaned == '<span class="k">a</span>b'


def test_links_keep_only_safe_schemes_and_get_rel_and_target() -> None:
    html = sanitize_html('<a href="javascript:alert(1)">a</a><a href="https://example.com/">b</a>')
    assert "javascript" not in html
    assert 'href="https://example.com/"' in html
    assert html.count('rel="noopener noreferrer nofollow"') == 2
    assert html.count('target="_blank"') == 2


def test_the_page_gets_the_same_allow_list_as_json() -> None:
    policy = client_policy()
    assert set(policy["tags"]) == rendering._TAGS
    assert policy["attributes"]["a"] == ["href", "title"]
    assert "k" in policy["classes"]["span"] and "evil" not in policy["classes"]["span"]
    assert policy["url_schemes"] == ["http", "https", "mailto"]


def test_the_committed_highlight_css_is_what_pygments_makes_now() -> None:
    # Regenerate with: python -c "from conversations.rendering import highlight_css; ..."
    # (see the module's docstring); a Pygments upgrade can change the colours.
    assert (STATIC / "highlight.css").read_text() == highlight_css()
    css = highlight_css()
    assert "@media (prefers-color-scheme: light)" in css
    assert "@media (prefers-color-scheme: dark)" in css
    assert "border" not in css and "background" not in css


def test_the_renderer_has_a_version_for_caches() -> None:
    assert rendering.RENDER_VERSION == 3


def test_table_columns_keep_their_alignment() -> None:
    html = markdown_html("| a | b | c |\n| :-: | --: | --- |\n| 1 | 2 | 3 |\n")
    assert '<th align="center">a</th>' in html and '<td align="right">2</td>' in html
    assert "<td>3</td>" in html and "style" not in html
