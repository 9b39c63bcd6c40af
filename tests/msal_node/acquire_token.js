// Get a client-credentials token from an Entra authority with msal-node (for
// tests/test_fake_entra_oidc.py).  Arguments: authority client_id client_secret.
// Prints one JSON line; exit status 1 when MSAL refused.  Never prints the token.
const msal = require("@azure/msal-node");

const [authority, clientId, clientSecret] = process.argv.slice(2);
const app = new msal.ConfidentialClientApplication({
  auth: { clientId, authority, clientSecret, knownAuthorities: [new URL(authority).host] },
  system: { loggerOptions: { loggerCallback: () => {}, piiLoggingEnabled: false } },
});
app.acquireTokenByClientCredential({ scopes: ["https://graph.microsoft.com/.default"] })
  .then((result) => {
    console.log(JSON.stringify({ ok: true, tokenType: result.tokenType, hasToken: Boolean(result.accessToken) }));
  })
  .catch((error) => {
    console.log(JSON.stringify({ ok: false, error: String((error && (error.errorCode || error.message)) || error) }));
    process.exitCode = 1;
  });
