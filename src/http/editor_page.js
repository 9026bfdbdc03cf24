(function () {
  var mount = JSON.parse(document.getElementById('atelier-editor').textContent);
  // The backpack reads its user and token from the page URL (`[?&]token=…&username=…`, read
  // on every render). A fragment is never sent in a request, so the token stays out of logs.
  history.replaceState(null, '', location.pathname + '#&token=' +
    encodeURIComponent(mount.backpackToken) + '&username=' + encodeURIComponent(mount.username));
  var el = document.getElementById('editor');
  GUI.setAppElement(el);
  GUI.createStandaloneRoot(new GUI.EditorState({locale: 'en'}), el).render(mount.props);
  watch(mount.backpackToken, mount.props.projectId);

  // Changes made elsewhere and this tab's refused saves. The editor's requests are its own, so
  // the page asks the server where this tab's editing session stands (`editorSession`): its
  // base (the version it last loaded or saved; only its own load or save moves it) and its
  // newest refused save. A current version above the base was saved elsewhere; an unresolved
  // refused save is this tab's. Asked when `projectChanged` says the project changed, and every
  // few seconds (a refused save is no change, so no event tells of it).
  function watch (token, projectId) {
    var $ = function (id) { return document.getElementById(id); };
    var banner = $('atelier-banner'), text = $('atelier-banner-text'), note = $('atelier-banner-note');
    var keep = $('atelier-keep'), state = null, shown = null, ws = null, watching = projectId;
    var STATE = 'query($t: String!) { editorSession(token: $t) { baseVersion ' +
      'project { id version } lastConflict { id resolvedVersion } } }';
    var WORDS = {
      VERSION_CONFLICT: 'The project changed elsewhere meanwhile: reload to see it, or try again.',
      UNAUTHENTICATED: 'You are signed out: sign in again, then reload.',
      FORBIDDEN: 'You may not change this project.',
      NOT_FOUND: 'This project or this save no longer exists: reload.'
    };
    function gql (query, variables) {
      return fetch('/graphql', {
        method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({query: query, variables: variables})
      }).then(function (r) { return r.json(); });
    }
    function codeOf (r) {
      var e = r.errors && r.errors[0];
      return e ? (e.extensions && e.extensions.code) || 'ERROR' : null;
    }
    function show () {
      var c = state.lastConflict;
      var mode = c && c.resolvedVersion === null ? 'refused'
        : state.baseVersion !== null && state.project.version > state.baseVersion ? 'changed' : null;
      if (mode === shown) return;
      shown = mode;
      banner.hidden = !mode;
      keep.hidden = mode !== 'refused';
      note.textContent = '';
      text.textContent = mode === 'refused'
        ? 'Your save was not applied: the project changed elsewhere.'
        : 'This project was changed in another tab or by someone else.';
      banner.dataset.state = mode || '';
    }
    function refresh () {
      return gql(STATE, {t: token}).then(function (r) {
        var s = r.data && r.data.editorSession;
        if (!s) return;
        state = s;
        show();
        // File > New or a copy: the session went on with another project.
        if (s.project.id !== watching) {
          watching = s.project.id;
          if (ws) ws.close();
        }
      }, function () {});
    }
    $('atelier-latest').addEventListener('click', function () {
      var id = state ? state.project.id : projectId;
      if (id === projectId) location.reload();
      else location.assign('/projects/' + encodeURIComponent(id) + '/editor');
    });
    keep.addEventListener('click', function () {
      var s = state;
      keep.disabled = true;
      note.textContent = 'Keeping your version…';
      gql('mutation($i: ResolveConflictInput!) { resolveConflict(input: $i) { version } }', {
        i: {id: s.project.id, conflictId: s.lastConflict.id, expectedVersion: s.project.version}
      }).then(function (r) {
        var code = codeOf(r);
        if (!code) return location.reload();
        keep.disabled = false;
        note.textContent = WORDS[code] || 'Your version could not be kept (' + code + '): try again.';
        refresh();
      }, function () {
        keep.disabled = false;
        note.textContent = 'Atelier could not be reached: try again.';
      });
    });
    function subscribe (delay) {
      ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/graphql/ws', 'graphql-transport-ws');
      var send = function (m) { ws.send(JSON.stringify(m)); };
      ws.onopen = function () { send({type: 'connection_init', payload: {}}); };
      ws.onmessage = function (e) {
        var m = JSON.parse(e.data);
        if (m.type === 'connection_ack') {
          delay = 1000;
          send({id: '1', type: 'subscribe', payload: {
            query: 'subscription($id: ID!) { projectChanged(id: $id) { version } }',
            variables: {id: watching}
          }});
          refresh();
        } else if (m.type === 'ping') send({type: 'pong'});
        else if (m.type === 'next') refresh();
        else if (m.type === 'error' || m.type === 'complete') ws.close();
      };
      ws.onclose = function () {
        setTimeout(function () { subscribe(Math.min(delay * 2, 60000)); }, delay);
      };
    }
    subscribe(1000);
    setInterval(refresh, 4000);
    addEventListener('focus', refresh);
  }
})();
