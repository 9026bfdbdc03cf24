(function () {
  var mount = JSON.parse(document.getElementById('atelier-editor').textContent);
  // The backpack reads its user and token from the page URL (`[?&]token=…&username=…`, read
  // on every render). A fragment is never sent in a request, so the token stays out of logs.
  history.replaceState(null, '', location.pathname + '#&token=' +
    encodeURIComponent(mount.backpackToken) + '&username=' + encodeURIComponent(mount.username));
  var el = document.getElementById('editor');
  GUI.setAppElement(el);
  GUI.createStandaloneRoot(new GUI.EditorState({locale: 'en'}), el).render(mount.props);
})();
