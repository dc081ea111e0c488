"""The page's own style and scripts: what gradio's components do not do by themselves.

CSS and PAGE_JS go to `launch()` (app/main.py); the others run on one event each
(app/ui/layout.py). Kept apart from the layout: they are browser code, tested in Chromium
(tests/browser/test_browser*.py).
"""

from __future__ import annotations

import json

from app.previews import PREVIEW_SUFFIX
from app.ui.words import EXAMPLES_IN_CHINESE, GRADIO_IN_CHINESE, browser_word

# The page's own style, given to launch(): a formula KaTeX cannot read shows as its source in
# the text's colour, not as a red error; the banner is one line.
CSS = """
.katex-error { color: inherit !important; }
#banner summary { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; cursor: pointer; }
#banner { font-size: 0.9em; margin: 0; }
@media (max-width: 640px) { #title h2 { font-size: 1.15rem; margin: 0; } }
#export_file { display: none !important; }
#keys { font-size: 0.8em; opacity: 0.75; }
#edit_warning { font-size: 0.85em; color: var(--color-accent); margin-top: 4px; }
#chatbot textarea { width: min(640px, 72vw) !important; min-height: 4.5em; }
.sidebar .toggle-button.toggle-labelled { flex-direction: column; height: auto !important;
  gap: 4px; padding: 6px 0; border-radius: var(--radius-md); }
.sidebar .toggle-button .toggle-word { writing-mode: vertical-rl; white-space: nowrap;
  font-size: 0.75em; font-weight: 600; }
#input .thumbnail-wrapper[data-name] { position: relative; margin-bottom: 1.2em; }
#input .thumbnail-wrapper[data-name]::after { content: attr(data-name); position: absolute;
  left: 0; top: 100%; max-width: 8em; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; font-size: 0.7em; opacity: 0.8; }
#chatbot [data-attachment-name] { flex-wrap: wrap; }
#chatbot [data-attachment-name][data-length]::after {
  content: attr(data-attachment-name) " · " attr(data-length); }
#chatbot pre.as-typed { white-space: pre-wrap; overflow-wrap: anywhere; font: inherit;
  background: none; border: none; padding: 0; margin: 0; color: inherit; }
/* gradio's "Loading response" dots, left mid-chat while a later question streams. */
#chatbot .message-wrap > .container:has(> .pending):has(~ .message-row) { display: none; }
#input.queued { outline: 2px dashed var(--color-accent); outline-offset: 2px; }
#queued_note { display: flex; gap: 10px; align-items: center; font-size: 0.85em; }
#queued_note button { text-decoration: underline; color: var(--color-accent); }
#chatbot .file-container:has(img.page-preview) .file-icon { display: none; }
#chatbot img.page-preview { max-width: 120px; max-height: 160px; object-fit: contain;
  border: 1px solid var(--border-color-primary); margin-right: 8px; }
#chatbot [data-attachment-name]::after { content: attr(data-attachment-name); display: block;
  flex-basis: 100%; font-size: 0.75em; opacity: 0.8; overflow-wrap: anywhere; }
#chatbot .branch-button { color: var(--block-label-text-color); order: 2; }
#chatbot .message-buttons button.thumb-down { order: 1; }
#chatbot button.edit-labelled { width: auto !important; height: auto !important; gap: 4px;
  padding: 4px 10px !important; border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-md); opacity: 1 !important; font-weight: 600; }
"""
# The words PAGE_JS says, in the browser's language (app/ui/words.py).
PAGE_JS_WORDS = (
    "send_label",
    "stop_label",
    "edit_drops_one",
    "edit_drops_many",
    "edit_save",
    "edit_cancel",
    "chats",
    "branch",
    "pages_one",
    "pages_many",
    "queued",
    "unqueue",
)
# The page's own script, given to launch(): keys (Esc, Alt+N, Enter in an edit), the warning of
# an edit that drops later turns, words on an edit's ✓ and ✕, and the accessible names of Send
# and Stop (gradio names Send "Submit"); in the browser's language.
PAGE_JS = (
    """() => {
  const words = __WORDS__;
  const GRADIO_IN_CHINESE = __GRADIO_IN_CHINESE__;
  const EXAMPLES_IN_CHINESE = __EXAMPLES_IN_CHINESE__;
  const PREVIEW_SUFFIX = __PREVIEW_SUFFIX__;
  // gradio's own names of the chatbot's buttons, in each language its i18n gives them.
  const labels = names => names.map(n => `#chatbot button[aria-label='${n}']`).join(', ');
  const EDIT = labels(['Edit', '编辑']), SAVE = labels(['Submit', '发送']);
  const CANCEL = labels(['Cancel', '取消']);
  // A thumb's names in each language, whether it is pressed, whether it is the down one (a
  // pressed one gradio names in English: the page's Chinese for it, GRADIO_IN_CHINESE).
  const THUMBS = [[['Like', '赞'], false, false], [['Dislike', '踩'], false, true],
                  [['Liked', GRADIO_IN_CHINESE.Liked], true, false],
                  [['Disliked', GRADIO_IN_CHINESE.Disliked], true, true]];
  // A fork: two lines from one stem (the usual picture of a branch).
  const BRANCH_ICON = '<svg width="14" height="14" viewBox="0 0 24 24" fill="none" ' +
    'stroke="currentColor" stroke-width="2" stroke-linecap="round" aria-hidden="true">' +
    '<circle cx="6" cy="5" r="2"/><circle cx="6" cy="19" r="2"/><circle cx="18" cy="7" r="2"/>' +
    '<path d="M6 7v10M18 9c0 5-6 4-10 8"/></svg>';
  // Qwen2-VL's grounding tokens, as they stand in a reply's text.
  const GROUNDING_TOKENS = /<\\|(?:object_ref|box|quad)_(start|end)\\|>/g;
  // How gradio's accessible name of a question starts, in English and as the page puts it in
  // Chinese (GRADIO_IN_CHINESE).
  const QUESTION_PREFIXES = ["user's message: ", GRADIO_IN_CHINESE["user's message: "]];
  // Files of a question (never a picture its text names: that is Markdown, shown as typed).
  const FILES =
    ':is(img, video, audio, a[download], .file-preview, [data-testid="file"]):not(.md *)';
  // The address a photo or video of the chat shows.
  const sourceOf = m => m.currentSrc || m.src || m.querySelector('source')?.src || '';
  const button = (selector, text) => [...document.querySelectorAll(selector)]
    .find(b => b.offsetParent !== null && (!text || b.textContent.trim() === text));
  // The next question, typed while a reply streams: Enter queues it (the box keeps it, shown
  // as queued, with a way out) and it is sent when the reply ends, however it ends. Opening or
  // clearing a chat takes it out of the queue (the draft stays in the box).
  const streaming = () => !!button('#input .stop-button');
  const boxHolds = () => !!(document.querySelector('#input textarea')?.value.trim() ||
    document.querySelector('#input .thumbnail-item'));
  let queued = false;
  const showQueued = () => {
    const box = document.querySelector('#input');
    box?.classList.toggle('queued', queued);
    let note = document.querySelector('#queued_note');
    if (!queued) { note?.remove(); return; }
    if (note || !box) return;
    note = document.createElement('div');
    note.id = 'queued_note';
    note.setAttribute('role', 'status');
    const said = Object.assign(document.createElement('span'), {textContent: words.queued});
    const out = Object.assign(document.createElement('button'),
                              {type: 'button', textContent: words.unqueue});
    out.addEventListener('click', () => { queued = false; showQueued(); });
    note.append(said, out);
    box.after(note);
  };
  const sendQueued = () => {
    if (!queued || streaming()) return;
    const send = button('#input .submit-button');
    if (!send) return;
    queued = false;
    showQueued();
    if (boxHolds()) send.click();
  };
  document.addEventListener('keydown', e => {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing) return;
    if (!e.target.matches('#input textarea') || !streaming()) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    if (boxHolds()) { queued = true; showQueued(); }
  }, true);  // before gradio's own handler, which would drop it
  const UNQUEUE = "#clear, #new_chat, #chat_list, #delete_chat, #import_chat, .branch-button, " +
    "#chatbot button[aria-label='Clear']";
  document.addEventListener('click', e => {
    if (queued && e.target.closest(UNQUEUE)) { queued = false; showQueued(); }
  }, true);
  document.addEventListener('keydown', e => {
    if (e.key === 'Escape') {
      const stop = button('#input .stop-button') || button('#input button', 'Stop');
      if (stop) { e.preventDefault(); stop.click(); }
    } else if (e.altKey && !e.ctrlKey && !e.metaKey && e.code === 'KeyN') {
      e.preventDefault();
      queued = false;
      showQueued();
      document.querySelector('#new_chat')?.click();
    } else if (e.key === 'Enter' && !e.shiftKey && e.target.matches('#chatbot textarea')) {
      // An edit is saved with Enter, as the box sends (Shift+Enter: a new line).
      const save = button(SAVE);
      if (save) { e.preventDefault(); save.click(); }
    }
  });
  // After Stop the keyboard stays in the box (Esc kept it; a click on Stop lost it).
  document.addEventListener('click', e => {
    if (!e.target.closest('#input .stop-button')) return;
    setTimeout(() => document.querySelector('#input textarea')?.focus(), 50);
  }, true);
  // Edit on a question with files: gradio's edit would send nothing (it stops at a file), so
  // the question is clicked instead, which the app answers by putting it in the box.
  document.addEventListener('click', e => {
    // A message's buttons follow its bubbles' row (gradio 6's chatbot).
    const row = e.target.closest(EDIT)?.closest('.message-buttons')?.previousElementSibling;
    if (!row?.matches('.message-row') || !row.querySelector(FILES)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    window.qwenEditAsked = Date.now();
    row.querySelector("[data-testid='user']")?.click();
  }, true);
  // Branch: the message's own bubble is clicked for it (gradio's select says which message),
  // marked so that the app continues in a new chat from there.
  document.addEventListener('click', e => {
    const row = e.target.closest('#chatbot .branch-button')?.closest('.message-buttons')
      ?.previousElementSibling;
    if (!row?.matches('.message-row')) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    window.qwenBranchAsked = Date.now();
    row.querySelector("[data-testid='user'], [data-testid='bot']")?.click();
  }, true);
  // An edit drops every later turn: say how many before it is saved.
  document.addEventListener('click', e => {
    const edit = e.target.closest(EDIT);
    if (!edit) return;
    const bubbles = [...document.querySelectorAll("#chatbot [data-testid='user']")];
    // The question edited: the last one before its Edit button.
    const before = bubbles.filter(
      b => b.compareDocumentPosition(edit) & Node.DOCUMENT_POSITION_FOLLOWING);
    const later = before.length ? bubbles.length - before.length : 0;
    document.querySelectorAll('#edit_warning').forEach(w => w.remove());
    if (later < 1) return;
    let tries = 0;
    const show = () => {
      const box = document.querySelector('#chatbot textarea');
      if (!box) { if (tries++ < 40) setTimeout(show, 50); return; }
      const note = document.createElement('div');
      note.id = 'edit_warning';
      note.textContent = later > 1 ?
        words.edit_drops_many.replace('{n}', later) : words.edit_drops_one;
      box.after(note);
    };
    show();
  }, true);  // in the capture phase: the chatbot's own handler may stop the click
  // gradio's own names, tooltips and screen-reader notes its i18n leaves in English.
  const chinese = (navigator.language || '').toLowerCase().startsWith('zh');
  const prefixes = Object.keys(GRADIO_IN_CHINESE).filter(k => k.endsWith(': '));
  const inChinese1 = value => {
    if (GRADIO_IN_CHINESE[value]) return GRADIO_IN_CHINESE[value];
    const p = prefixes.find(k => value.startsWith(k));
    return p ? GRADIO_IN_CHINESE[p] + value.slice(p.length) : null;
  };
  const inChinese = () => {
    for (const attribute of ['aria-label', 'title']) {
      document.querySelectorAll(`[${attribute}]`).forEach(e => {
        const said = inChinese1(e.getAttribute(attribute));
        if (said) e.setAttribute(attribute, said);
      });
    }
    // Texts: the camera's and gradio's screen-reader-only labels and notes; the example
    // questions (the box gets them in Chinese too: app/ui/handlers.py).
    const roots = '#camera, .sr-only, [data-testid="block-info"], #chatbot .examples, .gallery';
    document.querySelectorAll(roots).forEach(root => {
      const texts = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
      while (texts.nextNode()) {
        const text = texts.currentNode.textContent.trim();
        const said = inChinese1(text) || EXAMPLES_IN_CHINESE[text];
        if (said) texts.currentNode.textContent = said;
      }
    });
  };
  // A video's still frame and length, a PDF's first page and page count: from the preview
  // the app keeps beside the file once it has read it (app/previews.py). The browser may not
  // play the video's codec, and gradio shows a PDF as a bare link. Asked again a while, as
  // the app writes it when the question is read.
  const previews = new Map();
  const withPreview = (url, apply) => {
    if (!url) return;
    const known = previews.get(url) || {tries: 0, last: 0};
    previews.set(url, known);
    if (known.data) { apply(known.data); return; }
    if (known.pending || known.tries >= 20 || Date.now() - known.last < 1000) return;
    Object.assign(known, {pending: true, tries: known.tries + 1, last: Date.now()});
    const [base, query] = url.split('?');
    fetch(base + PREVIEW_SUFFIX + (query ? '?' + query : ''))
      .then(r => r.ok ? r.json() : null)
      .then(d => {
        if (d && String(d.poster).startsWith('data:image/jpeg;base64,')) known.data = d;
      })
      .catch(() => {})
      .finally(() => { known.pending = false; setTimeout(name, known.data ? 0 : 1100); });
  };
  const clock = seconds => {
    const s = Math.max(0, Math.round(Number(seconds) || 0));
    const [h, m] = [Math.floor(s / 3600), Math.floor(s / 60) % 60];
    const ss = String(s % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  };
  const showPreviews = () => {
    document.querySelectorAll("#chatbot [data-testid='user'] video").forEach(v => {
      withPreview(sourceOf(v), p => {
        if (v.poster !== p.poster) v.poster = p.poster;
        const length = clock(p.seconds);
        if (v.parentElement && v.parentElement.dataset.length !== length) {
          v.parentElement.dataset.length = length;
        }
        // A clip the browser cannot play said "0:00 / NaN:NaN".
        const time = v.closest('.wrap')?.querySelector('.controls .time');
        if (time && time.textContent.includes('NaN')) time.textContent = `0:00 / ${length}`;
      });
    });
    document.querySelectorAll("#chatbot [data-testid='user'] a.file-link").forEach(a => {
      if (!/[.]pdf$/i.test(a.getAttribute('download') || '')) return;
      withPreview(a.href, p => {
        const box = a.closest('.file-container');
        if (!box) return;
        let page = box.querySelector('img.page-preview');
        if (!page) {
          page = Object.assign(document.createElement('img'), {className: 'page-preview', alt: ''});
          box.prepend(page);
        }
        if (page.src !== p.poster) page.src = p.poster;
        const n = Number(p.pages) || 0;
        const said = 'PDF · ' + (n === 1 ? words.pages_one : words.pages_many.replace('{n}', n));
        const type = box.querySelector('.file-type');
        if (n && type && type.textContent !== said) type.textContent = said;
      });
    });
  };
  // An edit's ✓ and ✕ say what they do.
  const labelEditButtons = () => {
    for (const [selector, word] of [[SAVE, words.edit_save], [CANCEL, words.edit_cancel]]) {
      document.querySelectorAll(selector).forEach(b => {
        if (b.querySelector('.edit-word')) return;
        const span = document.createElement('span');
        span.className = 'edit-word';
        span.textContent = word;
        b.classList.add('edit-labelled');
        b.append(span);
      });
    }
  };
  // A thumb says whether it is pressed (gradio shows it by its fill and its name only), in
  // either language; up comes before down (gradio drew down first).
  const markThumbs = () => {
    for (const [names, pressed, down] of THUMBS) {
      document.querySelectorAll(labels(names)).forEach(b => {
        if (b.getAttribute('aria-pressed') !== String(pressed)) {
          b.setAttribute('aria-pressed', String(pressed));
        }
        b.classList.toggle('thumb-down', down);
      });
    }
  };
  // Each message offers to continue in a new chat from it (beside its copy and thumbs).
  const addBranchButtons = () => {
    document.querySelectorAll('#chatbot .message-buttons .icon-button-wrapper').forEach(w => {
      if (w.querySelector('.branch-button')) return;
      const b = document.createElement('button');
      b.className = 'icon-button padded branch-button';
      b.setAttribute('aria-label', words.branch);
      b.title = words.branch;
      b.innerHTML = BRANCH_ICON;
      w.append(b);
    });
  };
  // The side panel's toggle says what it opens (it was a bare chevron at the page's edge).
  const labelToggle = () => {
    document.querySelectorAll('.sidebar .toggle-button').forEach(b => {
      if (b.querySelector('.toggle-word')) return;
      const span = document.createElement('span');
      span.className = 'toggle-word';
      span.textContent = words.chats;
      b.classList.add('toggle-labelled');
      b.setAttribute('aria-label', words.chats);
      b.append(span);
    });
  };
  // A person's own words as typed: gradio renders a question as Markdown and HTML (a <b>
  // turned bold, an <img> tag a broken picture); the accessible name it gives the question
  // holds the text as typed, which takes the rendering's place (gradio's comment marks kept:
  // it may redraw there). A <pre>: never read as a formula by the page's math.
  const showAsTyped = () => {
    document.querySelectorAll("#chatbot [data-testid='user'] .message-content > .md").forEach(
      md => {
        const label = md.closest("[data-testid='user']").getAttribute('aria-label') || '';
        const prefix = QUESTION_PREFIXES.find(p => label.startsWith(p));
        if (prefix === undefined) return;
        const typed = label.slice(prefix.length);
        const shown = md.querySelector(':scope > pre.as-typed');
        if (shown?.textContent === typed && md.children.length === 1) return;
        [...md.childNodes].forEach(n => { if (n.nodeType !== Node.COMMENT_NODE) n.remove(); });
        md.append(Object.assign(document.createElement('pre'),
                                {className: 'as-typed', textContent: typed}));
      });
  };
  // Qwen2-VL's grounding tokens read as words in a reply ("the cat (100,200),(500,600)");
  // the chat keeps them (the boxes are drawn from them, and the model reads them back).
  const groundingAsWords = () => {
    document.querySelectorAll("#chatbot [data-testid='bot'] .md").forEach(md => {
      if (!md.textContent.includes('<|')) return;
      const texts = document.createTreeWalker(md, NodeFilter.SHOW_TEXT);
      while (texts.nextNode()) {
        const text = texts.currentNode.data;
        const shown = text.replace(GROUNDING_TOKENS, (_, kind) => kind === 'start' ? ' ' : '');
        if (shown !== text) texts.currentNode.data = shown;
      }
    });
  };
  // Each file in a question says its name (a video showed a bare player, a photo nothing),
  // shown by CSS from an attribute: not part of the message's text (copy, tests, readers).
  const nameAttachments = () => {
    const attached =
      "#chatbot [data-testid='user'] :is(img:not(.page-preview), video):not(.md *)";
    document.querySelectorAll(attached).forEach(m => {
      const holder = m.parentElement;
      const file = decodeURIComponent(sourceOf(m).split('?')[0].split('/').pop() || '');
      if (holder && file && holder.dataset.attachmentName !== file) {
        holder.dataset.attachmentName = file;
        holder.title = file;
      }
    });
  };
  // Send and Stop say what they do (gradio names Send "Submit").
  const labelSendAndStop = () => {
    document.querySelectorAll('#input .submit-button').forEach(
      b => b.setAttribute('aria-label', words.send_label));
    document.querySelectorAll('#input .stop-button').forEach(
      b => b.setAttribute('aria-label', words.stop_label));
  };
  // Run on every change of the page: gradio redraws freely.
  const name = () => {
    if (!document.querySelector('#chatbot textarea')) {  // the edit is saved or cancelled
      document.querySelectorAll('#edit_warning').forEach(w => w.remove());
    }
    labelEditButtons();
    markThumbs();
    addBranchButtons();
    labelToggle();
    if (chinese) inChinese();
    showAsTyped();
    groundingAsWords();
    nameAttachments();
    showPreviews();
    sendQueued();
    labelSendAndStop();
  };
  // characterData too: gradio changes some texts in place (its screen-reader status).
  new MutationObserver(name).observe(
    document.body, {childList: true, subtree: true, characterData: true});
  name();
}""".replace(
        "__WORDS__",
        "{" + ", ".join(f"{key}: {browser_word(key)}" for key in PAGE_JS_WORDS) + "}",
    )
    .replace("__GRADIO_IN_CHINESE__", json.dumps(dict(GRADIO_IN_CHINESE), ensure_ascii=False))
    .replace("__EXAMPLES_IN_CHINESE__", json.dumps(dict(EXAMPLES_IN_CHINESE), ensure_ascii=False))
    .replace("__PREVIEW_SUFFIX__", json.dumps(PREVIEW_SUFFIX))
)
# The box's files each named under their thumbnail (a PDF's and a video's were a bare icon),
# from the box's own value, in the browser alone: run on each change of the box.
NAME_ATTACHMENTS_JS = """(box) => {
  const names = ((box && box.files) || []).map(
    f => f.orig_name || decodeURIComponent(String(f.path || f.url || '').split('/').pop()));
  const label = () => document.querySelectorAll('#input .thumbnail-wrapper').forEach((w, i) => {
    if (names[i] && w.dataset.name !== names[i]) { w.dataset.name = names[i]; w.title = names[i]; }
  });
  label();
  setTimeout(label, 100);  // the thumbnails may be drawn after the value
  return [];
}"""
# After an export: its file, named after the chat, is clicked once it arrives (one click).
DOWNLOAD_JS = """async () => {
  for (let i = 0; i < 100; i++) {
    const a = document.querySelector('#export_file a[download]');
    if (a && a.dataset.fetched !== a.href) { a.dataset.fetched = a.href; a.click(); return; }
    await new Promise(r => setTimeout(r, 50));
  }
}"""
# A click on one of the chat's messages starts an edit in the box only where it came from an
# Edit (the page's script marks it, PAGE_JS): a click on a photo to look at it does not.
EDIT_ASKED_JS = (
    "(history, box, asked) => [history, box, Date.now() - (window.qwenEditAsked || 0) < 2000]"
)
# Likewise a Branch button (PAGE_JS marks its click).
BRANCH_ASKED_JS = (
    "(history, store, box, asked) => "
    "[history, store, box, Date.now() - (window.qwenBranchAsked || 0) < 2000]"
)
# Before Delete: the answer goes to the event as its first input.
CONFIRM_DELETE_JS = (
    f"(confirmed, store) => [window.confirm({browser_word('confirm_delete')}), store]"
)
