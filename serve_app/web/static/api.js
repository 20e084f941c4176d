// The documented HTTP API, as the page uses it: JSON calls, the upload with progress, Server-Sent Events over
// fetch (EventSource cannot send an Authorization header), binary downloads. The bearer token, when the service
// asks for one, lives in sessionStorage (this tab only) and only ever travels in the Authorization header.

const TOKEN_KEY = "triposr-serve.token";
const MAX_STREAM_RETRIES = 20; // reconnects of one event stream before giving up
const RETRY_DELAY_MS = 1000;

/** An error answered by the API ({"error": {"code", "message"}}), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  get readable() {
    return this.status ? `${this.message} (${this.code}, HTTP ${this.status})` : this.message;
  }
}

async function errorFrom(response) {
  let code = "http_error";
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, code, message);
}

export class Api {
  /** askToken(previousWasWrong) -> Promise<string|null>: the page's dialog. */
  constructor(askToken) {
    this.base = new URL(".", document.baseURI); // works behind a route prefix too
    this.askToken = askToken;
    this.pendingAsk = null;
  }

  url(path) {
    return new URL(path.replace(/^\//, ""), this.base).toString();
  }

  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  /** One dialog at a time, however many calls got 401 together. Resolves true when a token was given. */
  async obtainToken() {
    if (!this.pendingAsk) {
      const wrong = Boolean(this.token);
      this.pendingAsk = this.askToken(wrong).then((token) => {
        this.pendingAsk = null;
        if (token) this.token = token;
        return Boolean(token);
      });
    }
    return this.pendingAsk;
  }

  /** fetch with the token; a 401 asks for the token (once per call) and retries. Returns the Response. */
  async fetch(path, options = {}) {
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        response = await fetch(this.url(path), { ...options, headers: this.headers(options.headers) });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new ApiError(0, "network", `cannot reach the service: ${err.message}`);
      }
      if (response.status === 401 && attempt < 3 && (await this.obtainToken())) continue;
      if (!response.ok) throw await errorFrom(response);
      return response;
    }
  }

  async json(path, options = {}) {
    return (await this.fetch(path, options)).json();
  }

  async send(method, path, body) {
    return this.json(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async blob(path) {
    return (await this.fetch(path)).blob();
  }

  /** Multipart POST with upload progress (XMLHttpRequest: fetch has no upload progress). */
  upload(path, form, onProgress) {
    const attempt = () =>
      new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", this.url(path));
        for (const [k, v] of Object.entries(this.headers())) xhr.setRequestHeader(k, v);
        xhr.responseType = "json";
        xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
        xhr.onload = () => resolve(xhr);
        xhr.onerror = () => reject(new ApiError(0, "network", "the upload failed: the service cannot be reached"));
        xhr.send(form);
      });
    return (async () => {
      for (let i = 0; ; i++) {
        const xhr = await attempt();
        if (xhr.status === 401 && i < 3 && (await this.obtainToken())) continue;
        const body = xhr.response;
        if (xhr.status >= 200 && xhr.status < 300) return body;
        const err = body && body.error ? body.error : { code: "http_error", message: `HTTP ${xhr.status}` };
        throw new ApiError(xhr.status, err.code, err.message);
      }
    })();
  }

  /**
   * Follow a job's Server-Sent Events until its terminal state (or `signal` aborts). Calls onEvent(event)
   * with each parsed `data:` object. Reconnects with Last-Event-ID after a dropped connection.
   */
  async stream(path, onEvent, signal) {
    let lastId = null;
    for (let retries = 0; retries <= MAX_STREAM_RETRIES; retries++) {
      let terminal = false;
      try {
        const headers = { Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await this.fetch(path, { headers, signal, cache: "no-store" });
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
            const event = parseBlock(block);
            if (!event) continue;
            if (event.id !== null) lastId = event.id;
            const data = JSON.parse(event.data);
            onEvent(data);
            if (["succeeded", "failed", "cancelled"].includes(data.state)) terminal = true;
          }
        }
        if (terminal) return;
      } catch (err) {
        if (err.name === "AbortError" || (signal && signal.aborted)) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) throw err;
      }
      if (signal && signal.aborted) return;
      await new Promise((r) => setTimeout(r, RETRY_DELAY_MS));
    }
  }
}

function parseBlock(block) {
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { id, data: data.join("\n") } : null;
}

/** Save a Blob under `name` through a temporary object URL (downloads carry the token in a header). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
