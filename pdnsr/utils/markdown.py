"""Markdown tables: the one renderer of the demo's ``results.md``, the test script's ``metrics.md``, the benchmarks'
tables and the GPU check's report."""


def markdown_table(headers, rows, right=()):
    """A markdown table as a string, without a final newline: the header line, the alignment line (``---``, or
    ``---:`` for the columns whose index is in ``right``) and a line per row; cells are written with ``str()``,
    None as an empty cell."""

    def line(cells):
        return '| ' + ' | '.join('' if cell is None else str(cell) for cell in cells) + ' |'

    align = '|' + '|'.join('---:' if i in right else '---' for i in range(len(headers))) + '|'
    return '\n'.join([line(headers), align, *map(line, rows)])
