"""Static HTML pages of generated images: a settings table, metric tables, and
sections of rows (a prompt and its images, each with a caption).

The page links images by paths relative to itself, so the folder can be
copied or served as it is. Every text is escaped.
"""
import dataclasses
import html
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
.row { display: flex; align-items: flex-start; gap: 0.5em; margin: 0.4em 0; }
.label { width: 22em; flex-shrink: 0; font-size: 0.9em; }
figure { margin: 0; text-align: center; font-size: 0.75em; }
figure img { image-rendering: pixelated; border: 2px solid #ddd; }
figure.good img { border-color: #2a2; }
figure.bad img { border-color: #c33; }
"""


@dataclasses.dataclass
class Image:
  path: str  # Relative to the page.
  caption: str = ''
  verdict: Optional[bool] = None  # Green (True) or red (False) frame; None: plain.


@dataclasses.dataclass
class Row:
  label: str
  images: List[Image]


@dataclasses.dataclass
class Section:
  title: str
  rows: List[Row]
  note: str = ''


def _table(records: Sequence[Mapping[str, Any]]) -> str:
  if not records:
    return ''
  columns = list(dict.fromkeys(key for record in records for key in record))
  head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in columns)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(_format(r.get(c, "")))}</td>'
                                  for c in columns) + '</tr>' for r in records)
  return f'<table><tr>{head}</tr>{body}</table>'


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def _figure(image: Image, size: int) -> str:
  verdict = {True: ' class="good"', False: ' class="bad"', None: ''}[image.verdict]
  return (f'<figure{verdict}><img src="{html.escape(image.path)}" width="{size}" '
          f'height="{size}" alt="{html.escape(image.caption)}">'
          f'<figcaption>{html.escape(image.caption)}</figcaption></figure>')


def write_page(path: str, title: str, sections: Sequence[Section],
               settings: Optional[Mapping[str, Any]] = None,
               tables: Optional[Dict[str, Sequence[Mapping[str, Any]]]] = None,
               image_size: int = 128) -> None:
  """Writes the page to `path` (its folder is created)."""
  parts = [f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
           f'</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>']
  if settings:
    parts.append('<h2>Settings</h2>' + _table([{'setting': k, 'value': v}
                                               for k, v in settings.items()]))
  for name, records in (tables or {}).items():
    parts.append(f'<h2>{html.escape(name)}</h2>{_table(records)}')
  for section in sections:
    parts.append(f'<h2>{html.escape(section.title)}</h2>')
    if section.note:
      parts.append(f'<p>{html.escape(section.note)}</p>')
    for row in section.rows:
      figures = ''.join(_figure(image, image_size) for image in row.images)
      parts.append(f'<div class="row"><div class="label">{html.escape(row.label)}</div>'
                   f'{figures}</div>')
  parts.append('</body></html>\n')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(parts))
