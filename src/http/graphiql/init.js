// Kept out of index.html so the page works under a CSP without 'unsafe-inline'.
(function () {
  var token = window.localStorage.getItem('atelier.token');
  var headers = token ? { Authorization: 'Bearer ' + token } : {};
  var wsProto = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  var fetcher = GraphiQL.createFetcher({
    url: window.location.origin + '/graphql',
    subscriptionUrl: wsProto + '//' + window.location.host + '/graphql/ws',
    headers: headers,
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultEditorToolsVisibility: true,
    defaultHeaders: token ? JSON.stringify(headers, null, 2) : '{\n  "Authorization": "Bearer <token from `atelier token create`>"\n}',
  }));
})();
