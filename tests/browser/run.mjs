// Headless Chromium against a running wscast: serves a page, opens two WebSockets from it (one
// with support_gzip=1 that inflates Binary frames with DecompressionStream('gzip'), one plain),
// exchanges broadcasts including non-ASCII text, and checks what the page received.
//
//   node run.mjs ws://127.0.0.1:PORT wss://localhost:PORT
//
// Chromium must trust the test CA (run.sh puts it in the NSS database under $HOME). TOKENS holds
// the admin API's answers to POST /v1/tokens by key: with tokens required, every page connects
// with its key's token, and one without is refused.
import http from 'node:http';
import { chromium } from 'playwright-core';

const urls = process.argv.slice(2);
const tokens = Object.fromEntries(Object.entries(JSON.parse(process.env.TOKENS || '{}')).map(([k, v]) => [k, v.token]));
if (urls.length === 0) {
  console.error('usage: node run.mjs WS_URL [WSS_URL]');
  process.exit(2);
}

const page_html = `<!doctype html><meta charset="utf-8"><title>wscast browser test</title>
<script>
async function inflate(buffer) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream('gzip'));
  return await new Response(stream).text();
}
function refused(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { ws.close(); resolve(false); };
    ws.onerror = () => resolve(true);
  });
}
function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.received = [];
    ws.kinds = [];
    ws.onmessage = async (event) => {
      if (typeof event.data === 'string') { ws.kinds.push('text'); ws.received.push(event.data); }
      else { ws.kinds.push('binary'); ws.received.push(await inflate(event.data)); }
    };
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error('cannot open ' + url));
  });
}
async function exchange(base, texts, tokens) {
  const token = (key) => tokens[key] ? '&token=' + encodeURIComponent(tokens[key]) : '';
  const withoutToken = Object.keys(tokens).length ? await refused(base + '/?specialKey=browser-plain') : true;
  const plain = await open(base + '/?specialKey=browser-plain' + token('browser-plain'));
  const gzip = await open(base + '/?specialKey=browser-gzip&support_gzip=1' + token('browser-gzip'));
  await new Promise((r) => setTimeout(r, 200));
  for (const t of texts) plain.send(t);
  const deadline = Date.now() + 5000;
  while ((plain.received.length < texts.length || gzip.received.length < texts.length) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const result = { plain: plain.received, plainKinds: plain.kinds, gzip: gzip.received, gzipKinds: gzip.kinds, withoutToken };
  plain.close(1000);
  gzip.close(1000);
  return result;
}
</script>`;

// Two demo pages from the admin listener, one plain and one gzip: a message typed in one
// appears in both, the gzip one inflated by the page.
async function demoPage(browser, url) {
  const join = async (key, gzip) => {
    const page = await browser.newPage();
    await page.goto(url);
    await page.fill('#key', key);
    if (tokens[key]) await page.fill('#token', tokens[key]);
    if (gzip) await page.check('#gzip');
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected'));
    return page;
  };
  const plain = await join('demo-plain', false);
  const gzip = await join('demo-gzip', true);
  const text = 'typed in the demo page \u2713';
  await plain.fill('#text', text);
  await plain.click('#send');
  const arrived = (page, kind) => page.waitForFunction(([t, k]) =>
    [...document.querySelectorAll('#log li')].some((li) => li.textContent === t && li.className === k),
    [text, kind], { timeout: 5000 }).then(() => true, () => false);
  const ok = (await arrived(plain, 'text')) && (await arrived(gzip, 'gzip'));
  if (process.env.SCREENSHOT) await gzip.screenshot({ path: process.env.SCREENSHOT });
  console.log(`${ok ? 'ok' : 'FAILED'}: demo page at ${url}: a message typed in the plain page appeared in both` +
    ` (as text, and as gzip inflated in the page)` + (process.env.SCREENSHOT ? `; screenshot ${process.env.SCREENSHOT}` : ''));
  return ok;
}

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(page_html);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  ],
});
let failed = false;
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const texts = ['hello from a browser', 'h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \u{1F600}', 'x'.repeat(5000)];
  for (const url of urls) {
    const r = await page.evaluate(([base, t, k]) => exchange(base, t, k), [url, texts, tokens]);
    const ok = JSON.stringify(r.plain) === JSON.stringify(texts) && JSON.stringify(r.gzip) === JSON.stringify(texts)
      && r.plainKinds.every((k) => k === 'text') && r.gzipKinds.every((k) => k === 'binary') && r.withoutToken;
    console.log(`${ok ? 'ok' : 'FAILED'}: ${url}: plain client got ${r.plain.length}/${texts.length} text frames, ` +
      `gzip client ${r.gzip.length}/${texts.length} binary frames inflated by DecompressionStream` +
      (ok ? ', all equal to what was sent' : '') +
      (Object.keys(tokens).length ? `; with connection tokens, and a page without one ${r.withoutToken ? 'was' : 'was NOT'} refused` : ''));
    if (!ok) {
      console.log(JSON.stringify(r).slice(0, 2000));
      failed = true;
    }
  }
  if (process.env.DEMO_URL) failed = !(await demoPage(browser, process.env.DEMO_URL)) || failed;
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
