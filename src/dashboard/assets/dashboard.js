// The nfslurm dashboard. With the study embedded in the page (a static
// report), it renders that and opens no connection; otherwise it reads the
// server's API and follows its event socket. Every piece of data reaches
// the page through textContent or attributes: folder names and log lines
// are never parsed as HTML.
(function () {
  'use strict';

  var UNIT_STATES = ['done', 'running', 'queued', 'waiting', 'retrying', 'failed',
    'blocked', 'stale', 'cancelled', 'invalid', 'disabled'];
  var RUN_STATES = ['submitting', 'pending', 'running', 'succeeded', 'failed', 'timeout',
    'oom', 'infra_failed', 'upstream_failed', 'cancelled', 'lost'];
  var FAILURES = ['failed', 'timeout', 'oom', 'infra_failed', 'lost'];
  var MAX_RUN_ROWS = 500;
  var MAX_FAILURES = 50;
  var MAX_TIMELINE_RUNS = 300;
  var JOBS_LIMIT = 1000;
  var LOG_TAIL = 20;

  var current = null;     // the data rendered: {study, generated_at, status, jobs, logs}
  var selected = null;    // the unit key whose history is open
  var cells = new Map();  // unit key -> its matrix buttons
  var live = false;

  // ---- small helpers ----------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, props, children) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === null || v === undefined) return;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'className') node.className = v;
        else if (k === 'data') Object.keys(v).forEach(function (d) { node.dataset[d] = String(v[d]); });
        else node.setAttribute(k, String(v));
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function unitKey(u) {
    var key = u.pipeline + '/sub-' + u.subject;
    if (u.session !== null && u.session !== undefined) key += '/ses-' + u.session;
    return key;
  }

  function sameUnit(run, unit) {
    return run.pipeline === unit.pipeline && run.subject === unit.subject &&
      (run.session || null) === (unit.session || null);
  }

  function isFailure(run) { return FAILURES.indexOf(run.state) >= 0; }

  function time(s) {
    if (!s) return null;
    var t = Date.parse(s);
    return isNaN(t) ? null : t;
  }

  function pad(n) { return n < 10 ? '0' + n : String(n); }

  function fmtTime(ms, seconds) {
    if (ms === null) return '';
    var d = new Date(ms);
    var text = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) +
      ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes());
    return seconds ? text + ':' + pad(d.getSeconds()) : text;
  }

  function fmtDuration(secs) {
    if (secs === null || secs === undefined || isNaN(secs)) return '';
    secs = Math.max(0, Math.round(secs));
    if (secs < 60) return secs + 's';
    if (secs < 3600) return Math.floor(secs / 60) + 'm' + pad(secs % 60) + 's';
    if (secs < 86400) return Math.floor(secs / 3600) + 'h' + pad(Math.floor(secs % 3600 / 60)) + 'm';
    return Math.floor(secs / 86400) + 'd' + pad(Math.floor(secs % 86400 / 3600)) + 'h';
  }

  function fmtMB(mb) {
    if (mb === null || mb === undefined) return '-';
    if (mb < 1024) return Math.round(mb) + 'M';
    return (mb / 1024).toFixed(1) + 'G';
  }

  function byLabel(a, b) { return String(a).localeCompare(String(b), undefined, { numeric: true }); }

  function badge(stateWord) {
    return el('span', { className: 'badge st', data: { state: stateWord }, text: stateWord });
  }

  function now() { return current && !live && current.generated_at ? time(current.generated_at) : Date.now(); }

  function waitSecs(run) {
    var s = time(run.submitted_at), t = time(run.started_at);
    return s !== null && t !== null ? (t - s) / 1000 : null;
  }

  function elapsedSecs(run) {
    if (run.elapsed_s !== null && run.elapsed_s !== undefined) return run.elapsed_s;
    var t = time(run.started_at);
    if (t === null) return null;
    var e = time(run.ended_at);
    return ((e !== null ? e : now()) - t) / 1000;
  }

  function pipelinesOf(data) {
    var seen = [];
    data.status.units.forEach(function (u) { if (seen.indexOf(u.pipeline) < 0) seen.push(u.pipeline); });
    data.jobs.forEach(function (r) { if (seen.indexOf(r.pipeline) < 0) seen.push(r.pipeline); });
    return seen;
  }

  // ---- header and summary ----------------------------------------------

  function renderHeader(data) {
    var study = String(data.study || '');
    var name = study.replace(/\/+$/, '').split('/').pop() || study || location.host;
    $('study').textContent = name;
    $('study').title = study;
    document.title = name + ' · nfslurm';
    var at = time(data.generated_at);
    $('generated').textContent = (live ? 'updated ' : 'generated ') + fmtTime(at, true);
  }

  function renderSummary(data) {
    var units = data.status.units;
    var pipelines = pipelinesOf(data).filter(function (p) {
      return units.some(function (u) { return u.pipeline === p; });
    });
    var perState = {};
    units.forEach(function (u) { perState[u.state] = (perState[u.state] || 0) + 1; });
    var shown = UNIT_STATES.filter(function (s) { return perState[s]; });
    Object.keys(perState).forEach(function (s) { if (shown.indexOf(s) < 0) shown.push(s); });

    var tiles = $('summary-tiles');
    clear(tiles);
    tiles.appendChild(el('div', { className: 'tile' }, [
      el('span', { className: 'n', text: units.length }), el('span', { className: 'w', text: units.length === 1 ? 'unit' : 'units' })]));
    shown.forEach(function (s) {
      var tile = el('div', { className: 'tile st', data: { state: s } }, [
        el('span', { className: 'n', text: perState[s] }), el('span', { className: 'w', text: s })]);
      tile.style.setProperty('--tile', 'var(--c)');
      tiles.appendChild(tile);
    });

    var table = $('summary-table');
    clear(table);
    if (!units.length) {
      table.appendChild(el('caption', { className: 'empty', text: 'no sessions registered yet: run `nfslurm discover` or `nfslurm sync`' }));
    } else {
      var head = el('tr', null, [el('th', { text: 'pipeline' })]);
      shown.forEach(function (s) { head.appendChild(el('th', { className: 'num', text: s })); });
      head.appendChild(el('th', { className: 'num', text: 'total' }));
      table.appendChild(el('thead', null, [head]));
      var body = el('tbody');
      var counts = data.status.counts || {};
      pipelines.forEach(function (p) {
        var row = el('tr', null, [el('th', { text: p })]);
        var total = 0;
        shown.forEach(function (s) {
          var n = (counts[p] && counts[p][s]) || 0;
          total += n;
          row.appendChild(el('td', { className: 'num' + (n ? '' : ' dim'), text: n ? n : '-' }));
        });
        row.appendChild(el('td', { className: 'num', text: total }));
        body.appendChild(row);
      });
      table.appendChild(body);
    }

    var alerts = $('alerts');
    clear(alerts);
    var list = data.status.alerts || [];
    alerts.hidden = !list.length;
    list.forEach(function (a) {
      var some = a.units.slice(0, 3).join(', ') + (a.units.length > 3 ? ', …' : '');
      alerts.appendChild(el('li', null, [
        el('strong', { text: a.pipeline }), ': ', el('code', { text: a.pattern }),
        ' in ' + a.units.length + (a.units.length === 1 ? ' unit' : ' units') + ' (' + some + ')']));
    });
  }

  function renderLegend(data) {
    var legend = $('legend');
    clear(legend);
    var present = {};
    data.status.units.forEach(function (u) { present[u.state] = true; });
    UNIT_STATES.concat(Object.keys(present).filter(function (s) { return UNIT_STATES.indexOf(s) < 0; }))
      .forEach(function (s) {
        var item = el('li', { className: 'st', data: { state: s } }, [el('span', { className: 'swatch' }), s]);
        if (!present[s]) item.style.opacity = '0.45';
        legend.appendChild(item);
      });
  }

  // ---- the matrix --------------------------------------------------------

  function renderMatrix(data) {
    var table = $('matrix');
    clear(table);
    cells = new Map();
    var units = data.status.units;
    if (!units.length) {
      table.appendChild(el('caption', { className: 'empty', text: 'no sessions registered yet' }));
      return;
    }
    var pipelines = pipelinesOf(data).filter(function (p) {
      return units.some(function (u) { return u.pipeline === p; });
    });
    var byCell = new Map();
    var sessions = new Map(); // subject -> [session]
    units.forEach(function (u) {
      var ses = u.session === null || u.session === undefined ? '' : String(u.session);
      byCell.set(u.pipeline + '\u0000' + u.subject + '\u0000' + ses, u);
      if (!sessions.has(u.subject)) sessions.set(u.subject, []);
      if (ses && sessions.get(u.subject).indexOf(ses) < 0) sessions.get(u.subject).push(ses);
    });
    var subjects = Array.from(sessions.keys()).sort(byLabel);

    var head = el('tr', null, [el('th', { className: 'row', text: 'session' })]);
    pipelines.forEach(function (p) { head.appendChild(el('th', { scope: 'col', text: p })); });
    table.appendChild(el('thead', null, [head]));
    var body = el('tbody');
    subjects.forEach(function (sub) {
      var list = sessions.get(sub).slice().sort(byLabel);
      if (!list.length) list = [null];
      list.forEach(function (ses, i) {
        var rowHead = el('th', { className: 'row', scope: 'row' }, [
          el('span', { className: i === 0 ? 'sub' : 'sub repeat', text: 'sub-' + sub })]);
        if (ses !== null) rowHead.appendChild(el('span', { className: 'ses', text: 'ses-' + ses }));
        var row = el('tr', { className: i === 0 ? 'first-of-subject' : null }, [rowHead]);
        pipelines.forEach(function (p) {
          var u = (ses !== null && byCell.get(p + '\u0000' + sub + '\u0000' + ses)) ||
            byCell.get(p + '\u0000' + sub + '\u0000');
          if (!u) {
            row.appendChild(el('td', { className: 'none' }, [el('span', { text: '·', title: 'no unit' })]));
            return;
          }
          var key = unitKey(u);
          var shared = u.session === null || u.session === undefined;
          var button = el('button', {
            type: 'button',
            className: 'cell st' + (shared ? ' shared' : ''),
            title: cellTitle(key, u),
            'aria-pressed': selected === key ? 'true' : 'false',
            data: { unit: key, state: u.state },
            text: u.state
          });
          button.addEventListener('click', function () { openUnit(key); });
          if (!cells.has(key)) cells.set(key, []);
          cells.get(key).push(button);
          row.appendChild(el('td', null, [button]));
        });
        body.appendChild(row);
      });
    });
    table.appendChild(body);
  }

  function cellTitle(key, u) {
    var title = key + ': ' + u.state;
    if (u.detail) title += ' (' + u.detail + ')';
    return title;
  }

  // ---- a unit's history ---------------------------------------------------

  function openUnit(key) {
    selected = key;
    cells.forEach(function (buttons, k) {
      buttons.forEach(function (b) { b.setAttribute('aria-pressed', k === key ? 'true' : 'false'); });
    });
    renderPanel();
    var panel = $('unit-panel');
    if (panel.scrollIntoView) panel.scrollIntoView({ block: 'nearest' });
  }

  function closeUnit() {
    selected = null;
    cells.forEach(function (buttons) { buttons.forEach(function (b) { b.setAttribute('aria-pressed', 'false'); }); });
    renderPanel();
  }

  function renderPanel() {
    var panel = $('unit-panel');
    clear(panel);
    var unit = selected && current && current.status.units.find(function (u) { return unitKey(u) === selected; });
    if (!unit) { panel.hidden = true; return; }
    panel.hidden = false;
    panel.dataset.state = unit.state;
    panel.dataset.unit = selected;
    var close = el('button', { type: 'button', className: 'close', text: 'close' });
    close.addEventListener('click', closeUnit);
    panel.appendChild(el('div', { className: 'panel-head' }, [
      el('h3', { text: selected }), badge(unit.state), close]));
    var facts = [];
    if (unit.detail) facts.push(unit.detail);
    else if (unit.reason) facts.push(unit.reason.replace(/_/g, ' '));
    facts.push(unit.attempts + (unit.attempts === 1 ? ' attempt' : ' attempts'));
    if (unit.job_id) facts.push('job ' + unit.job_id);
    if (unit.blocked_by && facts.join(' ').indexOf(unit.blocked_by) < 0) facts.push('waits on ' + unit.blocked_by);
    if (unit.next_attempt_at) facts.push('next attempt ' + fmtTime(time(unit.next_attempt_at)));
    panel.appendChild(el('p', { className: 'hint', text: facts.join(' · ') }));

    var runs = current.jobs.filter(function (r) { return sameUnit(r, unit); })
      .sort(function (a, b) { return b.run_id - a.run_id; });
    if (!runs.length) {
      panel.appendChild(el('p', { className: 'empty', text: 'no runs yet' }));
      return;
    }
    var table = el('table', { className: 'data history' });
    table.appendChild(el('thead', null, [el('tr', null, ['attempt', 'state', 'job', 'submitted', 'started', 'ended', 'waited', 'ran', 'memory', 'reason']
      .map(function (h) { return el('th', { text: h }); }))]));
    var body = el('tbody');
    runs.forEach(function (r) {
      body.appendChild(el('tr', null, [
        el('td', { className: 'num', text: r.attempt }),
        el('td', null, [badge(r.state)]),
        el('td', { text: r.job_id || '-' }),
        el('td', { text: fmtTime(time(r.submitted_at)) }),
        el('td', { text: fmtTime(time(r.started_at)) }),
        el('td', { text: fmtTime(time(r.ended_at)) }),
        el('td', { className: 'num', text: fmtDuration(waitSecs(r)) }),
        el('td', { className: 'num', text: fmtDuration(elapsedSecs(r)) }),
        el('td', { className: 'num', text: fmtMB(r.max_rss_mb) + '/' + fmtMB(r.mem_mb) }),
        el('td', { className: 'reason', text: runReason(r) })
      ]));
    });
    table.appendChild(body);
    panel.appendChild(el('div', { className: 'scroll' }, [table]));
    var last = runs[0];
    var log = current.logs && current.logs[String(last.run_id)];
    if (isFailure(last) && log) {
      panel.appendChild(el('p', { className: 'hint', text: 'the end of its last log' }));
      panel.appendChild(el('pre', { className: 'log', text: log }));
    }
  }

  function runReason(r) {
    var reason = r.reason || '';
    if (r.exit_code !== null && r.exit_code !== undefined && r.exit_code !== 0 && reason.indexOf('exit') < 0) {
      reason = reason ? 'exit ' + r.exit_code + ': ' + reason : 'exit ' + r.exit_code;
    }
    return reason.replace(/_/g, ' ');
  }

  // ---- failures ------------------------------------------------------------

  function renderFailures(data) {
    var box = $('failures');
    clear(box);
    var failed = data.jobs.filter(isFailure).sort(function (a, b) { return b.run_id - a.run_id; });
    if (!failed.length) {
      box.appendChild(el('p', { className: 'empty', text: 'no failed runs' }));
      return;
    }
    failed.slice(0, MAX_FAILURES).forEach(function (r) {
      var facts = ['attempt ' + r.attempt];
      if (r.job_id) facts.push('job ' + r.job_id);
      if (r.ended_at) facts.push('ended ' + fmtTime(time(r.ended_at)));
      var why = runReason(r);
      if (why) facts.push(why);
      var log = data.logs && data.logs[String(r.run_id)];
      box.appendChild(el('article', { className: 'failure', data: { run: r.run_id, unit: unitKey(r) } }, [
        el('h3', null, [el('span', { text: unitKey(r) }), badge(r.state)]),
        el('p', { className: 'why', text: facts.join(' · ') }),
        log ? el('pre', { className: 'log', text: log }) : el('p', { className: 'empty', text: 'no log lines kept for this run' })
      ]));
    });
    if (failed.length > MAX_FAILURES) {
      box.appendChild(el('p', { className: 'hint', text: 'and ' + (failed.length - MAX_FAILURES) + ' older failed runs: `nfslurm status runs --state failed`' }));
    }
  }

  // ---- runs ------------------------------------------------------------------

  function fillSelect(select, values) {
    var keep = select.value;
    while (select.options.length > 1) select.remove(1);
    values.forEach(function (v) { select.appendChild(el('option', { value: v, text: v })); });
    select.value = values.indexOf(keep) >= 0 ? keep : '';
  }

  function renderRunFilters(data) {
    var present = {};
    data.jobs.forEach(function (r) { present[r.state] = true; });
    var states = RUN_STATES.filter(function (s) { return present[s]; })
      .concat(Object.keys(present).filter(function (s) { return RUN_STATES.indexOf(s) < 0; }));
    fillSelect($('filter-state'), states);
    fillSelect($('filter-pipeline'), pipelinesOf(data));
  }

  function renderRuns() {
    var data = current;
    var table = $('runs');
    clear(table);
    var state = $('filter-state').value;
    var pipeline = $('filter-pipeline').value;
    var subject = $('filter-subject').value.trim().replace(/^sub-/, '').toLowerCase();
    var runs = data.jobs.filter(function (r) {
      return (!state || r.state === state) && (!pipeline || r.pipeline === pipeline) &&
        (!subject || String(r.subject).toLowerCase().indexOf(subject) >= 0);
    }).sort(function (a, b) { return b.run_id - a.run_id; });
    var note = $('runs-note');
    if (!runs.length) {
      table.appendChild(el('caption', { className: 'empty', text: data.jobs.length ? 'no run matches these filters' : 'no runs yet' }));
      note.hidden = true;
      return;
    }
    table.appendChild(el('thead', null, [el('tr', null, [
      ['job', ''], ['unit', ''], ['try', 'num'], ['state', ''], ['submitted', ''], ['waited', 'num'],
      ['ran', 'num'], ['memory', 'num'], ['reason', '']
    ].map(function (h) { return el('th', { className: h[1] || null, text: h[0] }); }))]));
    var body = el('tbody');
    runs.slice(0, MAX_RUN_ROWS).forEach(function (r) {
      var row = el('tr', { data: { run: r.run_id, state: r.state } }, [
        el('td', { text: r.job_id || '-' }),
        el('td', { text: unitKey(r) }),
        el('td', { className: 'num', text: r.attempt }),
        el('td', null, [badge(r.state)]),
        el('td', { text: fmtTime(time(r.submitted_at)) }),
        el('td', { className: 'num', text: fmtDuration(waitSecs(r)) }),
        el('td', { className: 'num', text: fmtDuration(elapsedSecs(r)) }),
        el('td', { className: 'num', text: fmtMB(r.max_rss_mb) + '/' + fmtMB(r.mem_mb) }),
        el('td', { className: 'reason', text: runReason(r) })
      ]);
      body.appendChild(row);
    });
    table.appendChild(body);
    note.hidden = false;
    note.textContent = runs.length > MAX_RUN_ROWS
      ? 'the newest ' + MAX_RUN_ROWS + ' of ' + runs.length + ' runs'
      : runs.length + (runs.length === 1 ? ' run' : ' runs') + (runs.length < data.jobs.length ? ' of ' + data.jobs.length : '');
  }

  // ---- timeline ----------------------------------------------------------------

  function renderTimeline(data) {
    var box = $('timeline');
    clear(box);
    var runs = data.jobs.filter(function (r) { return time(r.submitted_at) !== null; })
      .sort(function (a, b) { return b.run_id - a.run_id; }).slice(0, MAX_TIMELINE_RUNS);
    if (!runs.length) {
      box.appendChild(el('p', { className: 'empty', text: 'no run submitted yet' }));
      return;
    }
    var end = now();
    var t0 = Infinity, t1 = -Infinity;
    runs.forEach(function (r) {
      var s = time(r.submitted_at);
      var e = time(r.ended_at);
      if (e === null) e = (r.state === 'running' || r.state === 'pending' || r.state === 'submitting') ? end : (time(r.started_at) || s);
      t0 = Math.min(t0, s);
      t1 = Math.max(t1, e, s);
    });
    var span = Math.max(t1 - t0, 1000);
    function pct(t) { return ((t - t0) / span * 100).toFixed(3) + '%'; }
    function width(a, b) { return (Math.max(b - a, 0) / span * 100).toFixed(3) + '%'; }
    pipelinesOf(data).forEach(function (p) {
      var lane = runs.filter(function (r) { return r.pipeline === p; })
        .sort(function (a, b) { return time(a.submitted_at) - time(b.submitted_at) || a.run_id - b.run_id; });
      if (!lane.length) return;
      var track = el('div', { className: 'track' });
      lane.forEach(function (r) {
        var s = time(r.submitted_at);
        var st = time(r.started_at);
        var e = time(r.ended_at);
        var open = e === null && (r.state === 'running' || r.state === 'pending' || r.state === 'submitting');
        var row = el('div', {
          className: 'bar-row',
          title: unitKey(r) + ' · attempt ' + r.attempt + ' · ' + r.state +
            (waitSecs(r) !== null ? ' · waited ' + fmtDuration(waitSecs(r)) : '') +
            (elapsedSecs(r) !== null ? ' · ran ' + fmtDuration(elapsedSecs(r)) : '')
        });
        var waitEnd = st !== null ? st : (open ? end : (e !== null ? e : s));
        var wait = el('div', { className: 'bar wait' });
        wait.style.left = pct(s);
        wait.style.width = width(s, waitEnd);
        row.appendChild(wait);
        if (st !== null) {
          var runEnd = e !== null ? e : (open ? end : st);
          var bar = el('div', { className: 'bar run st', data: { state: r.state } });
          bar.style.left = pct(st);
          bar.style.width = width(st, runEnd);
          row.appendChild(bar);
        }
        track.appendChild(row);
      });
      box.appendChild(el('div', { className: 'lane', data: { pipeline: p } }, [
        el('h3', { text: p + ' (' + lane.length + (lane.length === 1 ? ' run)' : ' runs)') }), track]));
    });
    var withSeconds = span < 6 * 3600 * 1000;
    var axis = el('div', { className: 'axis' });
    var previous = null;
    [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
      var label = fmtTime(t0 + f * span, withSeconds).slice(withSeconds ? 11 : 5);
      axis.appendChild(el('span', { text: label === previous ? '' : label }));
      previous = label;
    });
    box.appendChild(axis);
    if (data.jobs.length > runs.length) {
      box.appendChild(el('p', { className: 'hint', text: 'the newest ' + runs.length + ' of ' + data.jobs.length + ' runs' }));
    }
  }

  // ---- memory ------------------------------------------------------------------

  function renderMemory(data) {
    var box = $('memory');
    clear(box);
    var any = false;
    pipelinesOf(data).forEach(function (p) {
      var runs = data.jobs.filter(function (r) { return r.pipeline === p && r.mem_mb > 0; });
      if (!runs.length) return;
      any = true;
      var measured = runs.filter(function (r) { return r.max_rss_mb !== null && r.max_rss_mb !== undefined; });
      var asked = Math.max.apply(null, runs.map(function (r) { return r.mem_mb; }));
      var row = el('div', { className: 'mem-row', data: { pipeline: p } }, [el('div', { className: 'mem-name', text: p })]);
      if (!measured.length) {
        row.appendChild(el('div', { className: 'mem-track' }));
        row.appendChild(el('div', { className: 'mem-text', text: 'asked ' + fmtMB(asked) + ' · no MaxRSS recorded yet' }));
        box.appendChild(row);
        return;
      }
      var rss = measured.map(function (r) { return r.max_rss_mb; }).sort(function (a, b) { return a - b; });
      var peak = rss[rss.length - 1];
      var median = rss[Math.floor((rss.length - 1) / 2)];
      var scale = Math.max(asked, peak, 1);
      var over = measured.some(function (r) { return r.max_rss_mb > r.mem_mb; });
      var track = el('div', {
        className: 'mem-track',
        title: p + ': peak ' + fmtMB(peak) + ', median ' + fmtMB(median) + ', asked ' + fmtMB(asked)
      });
      var fill = el('div', { className: 'mem-fill' + (over ? ' over' : '') });
      fill.style.width = (peak / scale * 100).toFixed(2) + '%';
      track.appendChild(fill);
      measured.forEach(function (r) {
        var dot = el('div', { className: 'mem-dot' });
        dot.style.left = 'calc(' + (r.max_rss_mb / scale * 100).toFixed(2) + '% - 1px)';
        track.appendChild(dot);
      });
      row.appendChild(track);
      var share = Math.round(peak / asked * 100);
      row.appendChild(el('div', {
        className: 'mem-text',
        text: 'peak ' + fmtMB(peak) + ' of ' + fmtMB(asked) + ' (' + share + '%) · median ' + fmtMB(median) +
          ' · ' + measured.length + (measured.length === 1 ? ' run' : ' runs')
      }));
      box.appendChild(row);
    });
    if (!any) box.appendChild(el('p', { className: 'empty', text: 'no runs yet' }));
  }

  // ---- everything ----------------------------------------------------------------

  function render(data) {
    current = data;
    renderHeader(data);
    renderSummary(data);
    renderLegend(data);
    renderMatrix(data);
    renderPanel();
    renderFailures(data);
    renderRunFilters(data);
    renderRuns();
    renderTimeline(data);
    renderMemory(data);
  }

  function showError(text) {
    var box = $('error');
    box.hidden = !text;
    box.textContent = text || '';
  }

  ['filter-state', 'filter-pipeline', 'filter-subject'].forEach(function (id) {
    $(id).addEventListener(id === 'filter-subject' ? 'input' : 'change', function () { if (current) renderRuns(); });
  });
  $('filters').addEventListener('submit', function (e) { e.preventDefault(); });

  function setIndicator(mode, text) {
    var ind = $('indicator');
    ind.hidden = false;
    ind.dataset.mode = mode;
    ind.textContent = text;
  }

  // ---- static report ---------------------------------------------------------------

  var embedded = $('nfslurm-data');
  if (embedded) {
    setIndicator('static', 'static report');
    try {
      render(JSON.parse(embedded.textContent));
    } catch (e) {
      showError('this report cannot be read: ' + e.message);
    }
    return;
  }

  // ---- live: the server's API and its event socket ---------------------------------

  live = true;
  // The token that opened the page is now the server's cookie: keep it out
  // of the address bar, bookmarks and screenshots.
  if (/[?&]token=/.test(location.search) && window.history && history.replaceState) {
    history.replaceState(null, '', location.pathname + location.hash);
  }
  var logCache = new Map();   // run id -> the end of its log (a failed run's log is final)
  var timer = null;
  var busy = false;
  var again = false;

  function get(path, asText) {
    return fetch(path, { credentials: 'same-origin', cache: 'no-store' }).then(function (res) {
      if (!res.ok) {
        throw new Error('`' + path + '` answered ' + res.status +
          (res.status === 401 ? ': open the address `nfslurm serve` printed, with its token' : ''));
      }
      return asText ? res.text() : res.json();
    });
  }

  function logOf(run) {
    var id = String(run.run_id);
    if (logCache.has(id)) return Promise.resolve(logCache.get(id));
    return get('api/v1/jobs/' + encodeURIComponent(id) + '/log?tail=' + LOG_TAIL, true)
      .then(function (text) { logCache.set(id, text); return text; })
      .catch(function (e) { return '(the log cannot be read: ' + e.message + ')'; });
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    Promise.all([get('api/v1/status'), get('api/v1/jobs?limit=' + JOBS_LIMIT)]).then(function (both) {
      var jobs = both[1].jobs || [];
      var failed = jobs.filter(isFailure).sort(function (a, b) { return b.run_id - a.run_id; }).slice(0, MAX_FAILURES);
      return Promise.all(failed.map(logOf)).then(function (texts) {
        var logs = {};
        failed.forEach(function (r, i) { logs[String(r.run_id)] = texts[i]; });
        showError('');
        render({
          study: both[0].study || location.host,
          generated_at: new Date().toISOString(),
          status: both[0],
          jobs: jobs,
          logs: logs
        });
      });
    }).catch(function (e) {
      showError('cannot read the study from the server: ' + e.message);
    }).then(function () {
      busy = false;
      if (again) { again = false; schedule(); }
    });
  }

  // One read of the API for a burst of events: 300 ms after the first one.
  // (Not pushed back by each new event, so a steady stream of events still
  // redraws the page; events during a read make one more read after it.)
  function schedule() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, 300);
  }

  function patchUnit(msg) {
    if (!msg.unit || !msg.state) return;
    (cells.get(msg.unit) || []).forEach(function (b) {
      b.dataset.state = msg.state;
      b.textContent = msg.state;
      b.title = msg.unit + ': ' + msg.state;
    });
    if (current) {
      var u = current.status.units.find(function (x) { return unitKey(x) === msg.unit; });
      if (u) {
        u.state = msg.state;
        if (selected === msg.unit) renderPanel();
      }
    }
  }

  var backoff = 1000;
  var opened = false;

  function connect() {
    var url = new URL('ws/events', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    var ws;
    try {
      ws = new WebSocket(url.href);
    } catch (e) {
      retry();
      return;
    }
    ws.onopen = function () {
      backoff = 1000;
      setIndicator('live', 'live');
      // Changes made while the socket was down are read once.
      if (opened) schedule();
      opened = true;
    };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && msg.type === 'unit') patchUnit(msg);
      schedule();
    };
    ws.onclose = retry;
  }

  function retry() {
    setIndicator('reconnecting', 'reconnecting');
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }

  setIndicator('reconnecting', 'connecting');
  refresh();
  connect();
})();
