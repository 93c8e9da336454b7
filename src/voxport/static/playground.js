// voxport playground: plain JavaScript, no dependencies; every request goes to this server.
'use strict';

const KEY = 'voxport.apiKey';
const $ = (sel, root = document) => root.querySelector(sel);
const state = { voices: [], audio: null, abort: null, count: 0 };
// The last result, for people and for tests: {format, sampleRate, samples, seconds, scheduledSamples,
// decodedSamples, decodedSeconds, ttfa, rtf, requestId}.
window.voxport = { last: null };

function apiKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || '';
}

function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set('Authorization', `Bearer ${key}`);
  return fetch(path, { ...options, headers });
}

async function errorOf(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return { message: `The server answered ${resp.status} ${resp.statusText}.`, param: null };
}

function status(text) { $('#status').textContent = text; }

function showKey(needed) {
  const section = $('#key-section');
  section.hidden = !(needed || apiKey());
  if (needed) {
    status('This server needs an API key: enter it below.');
    $('#api-key').focus();
  }
}

function clearErrors(form) {
  form.querySelectorAll('.err').forEach((el) => { el.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
}

// The server's OpenAI error, next to the field it names (error.param), else under the form.
function showError(form, error, resp) {
  if (resp && resp.status === 401) showKey(true);
  const param = (error.param || '').split(/[.[]/)[0];
  const field = param ? form.querySelector(`[data-param="${CSS.escape(param)}"]`) : null;
  const slot = field ? $('.err', field) : $('.err-general', form);
  slot.textContent = error.message || 'Something went wrong.';
  const input = field && $('input, select, textarea', field);
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

function describe(voice) {
  const kind = { designed: 'designed from a description', recording: 'a recording',
    uploaded: 'uploaded' }[voice.kind] || voice.kind;
  const parts = [kind, voice.source === 'user' ? 'your library' : 'built-in'];
  if (voice.duration) parts.push(`${voice.duration.toFixed(1)} s reference`);
  if (voice.has_transcript) parts.push('with transcript');
  if (voice.default) parts.push('default');
  return parts.join(', ');
}

function showVoice() {
  const voice = state.voices.find((v) => v.id === $('#voice').value);
  const about = voice && voice.prompt ? `${voice.prompt} (${describe(voice)})` : voice && describe(voice);
  $('#voice-desc').textContent = voice ? `${voice.name}: ${about}` : '';
  $('#delete-voice').disabled = !voice || voice.source !== 'user';
}

async function loadVoices(select) {
  const resp = await api('/v1/voices');
  if (!resp.ok) return resp;
  state.voices = (await resp.json()).data;
  const menu = $('#voice');
  const keep = select || menu.value;
  menu.replaceChildren(...state.voices.map((v) => {
    const option = new Option(`${v.name} (${v.source === 'user' ? 'yours' : v.kind})`, v.id);
    option.selected = v.id === keep || (!keep && v.default);
    return option;
  }));
  showVoice();
  return resp;
}

async function loadModels() {
  const resp = await api('/v1/models');
  if (!resp.ok) return resp;
  const ids = (await resp.json()).data.map((m) => m.id);
  $('#model').replaceChildren(...ids.map((id) => new Option(id, id)));
  return resp;
}

async function refresh() {
  try {
    const answers = [await loadModels(), await loadVoices()];
    const refused = answers.find((r) => !r.ok);
    if (refused) {
      if (refused.status === 401) return showKey(true);
      return status((await errorOf(refused)).message);
    }
    showKey(false);
    status(`${state.voices.length} voices ready.`);
  } catch (err) {
    status(`The server cannot be reached: ${err.message}`);
  }
}

function number(id) {
  const raw = $(`#${id}`).value.trim();
  if (raw === '') return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : raw; // the server judges the range
}

function speechBody() {
  const body = {
    model: $('#model').value, input: $('#input').value, voice: $('#voice').value,
    response_format: $('#response_format').value, speed: number('speed'),
    cfg_value: number('cfg_value'), inference_timesteps: number('inference_timesteps'),
    seed: number('seed'),
  };
  const instructions = $('#instructions').value.trim();
  if (instructions) body.instructions = instructions;
  return JSON.parse(JSON.stringify(body)); // drops the fields left empty
}

function audioContext() {
  if (!state.audio) state.audio = new AudioContext();
  if (state.audio.state === 'suspended') state.audio.resume().catch(() => {});
  return state.audio;
}

// Raw s16le mono, scheduled on the Web Audio clock as it arrives.
class PcmPlayer {
  constructor(rate) {
    this.ctx = audioContext();
    this.rate = rate;
    this.at = 0;
    this.odd = null;
    this.scheduled = 0;
  }

  push(chunk) {
    let bytes = chunk;
    if (this.odd) bytes = concat([this.odd, bytes]);
    this.odd = bytes.length % 2 ? bytes.slice(-1) : null;
    const n = bytes.length >> 1;
    if (!n) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const buffer = this.ctx.createBuffer(1, n, this.rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < n; i += 1) channel[i] = view.getInt16(2 * i, true) / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    this.at = Math.max(this.at, this.ctx.currentTime + 0.05);
    source.start(this.at);
    this.at += n / this.rate;
    this.scheduled += n;
  }
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

function wavBlob(pcm, rate) {
  const size = pcm.length - (pcm.length % 2);
  const head = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((c, i) => head.setUint8(at + i, c.charCodeAt(0)));
  text(0, 'RIFF'); head.setUint32(4, 36 + size, true); text(8, 'WAVE'); text(12, 'fmt ');
  head.setUint32(16, 16, true); head.setUint16(20, 1, true); head.setUint16(22, 1, true);
  head.setUint32(24, rate, true); head.setUint32(28, rate * 2, true); head.setUint16(32, 2, true);
  head.setUint16(34, 16, true); text(36, 'data'); head.setUint32(40, size, true);
  return new Blob([head, pcm.subarray(0, size)], { type: 'audio/wav' });
}

// A streamed wav says "length unknown" (0xFFFFFFFF); once all of it is here, write the real sizes.
function fixWavSizes(bytes) {
  if (bytes.length < 44) return bytes;
  const view = new DataView(bytes.buffer, bytes.byteOffset, 44);
  if (view.getUint32(4, true) === 0xFFFFFFFF) view.setUint32(4, bytes.length - 8, true);
  if (view.getUint32(40, true) === 0xFFFFFFFF) view.setUint32(40, bytes.length - 44, true);
  return bytes;
}

// Decoding the whole result proves it is audio a browser can play, and measures it.
async function decode(blob, rate) {
  try {
    const ctx = new OfflineAudioContext(1, 1, rate);
    return await ctx.decodeAudioData(await blob.arrayBuffer());
  } catch (_) {
    return null;
  }
}

function fmt(seconds) { return seconds == null || !Number.isFinite(seconds) ? '–' : `${seconds.toFixed(2)} s`; }

function addHistory(result, blob, body) {
  state.count += 1;
  const url = URL.createObjectURL(blob);
  const ext = result.format === 'pcm' ? 'wav' : result.format;
  const item = document.createElement('li');
  const meta = document.createElement('p');
  meta.className = 'meta';
  const voice = state.voices.find((v) => v.id === body.voice);
  meta.textContent = `${voice ? voice.name : body.voice} · ${result.format} · ${fmt(result.seconds)} · first audio ${fmt(result.ttfa)}`
    + ` · RTF ${result.rtf.toFixed(2)}`;
  const text = document.createElement('p');
  text.textContent = body.input;
  const audio = document.createElement('audio');
  audio.controls = true;
  audio.preload = 'none';
  audio.src = url;
  const link = document.createElement('a');
  link.href = url;
  link.download = `voxport-${state.count}-${body.voice}.${ext}`;
  link.textContent = `Download ${ext}`;
  item.append(meta, text, audio, link);
  $('#history').prepend(item);
  $('#history-empty').hidden = true;
}

async function speak(event) {
  event.preventDefault();
  const form = $('#speak-form');
  clearErrors(form);
  const body = speechBody();
  state.abort = new AbortController();
  $('#speak-button').disabled = true;
  $('#stop-button').disabled = false;
  $('#metrics').textContent = 'Generating…';
  const started = performance.now();
  try {
    const resp = await api('/v1/audio/speech/stream', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body), signal: state.abort.signal,
    });
    if (!resp.ok) {
      $('#metrics').textContent = '';
      const error = await errorOf(resp);
      // Longer than one request may be: the same body as a speech job, which has a much higher limit.
      if (error.code === 'string_too_long' && error.param === 'input') return await runAsJob(body, form);
      return showError(form, error, resp);
    }
    await receive(resp, body, started);
  } catch (err) {
    $('#metrics').textContent = '';
    $('.err-general', form).textContent = err.name === 'AbortError' ? 'Stopped.' : err.message;
  } finally {
    $('#speak-button').disabled = false;
    $('#stop-button').disabled = true;
  }
}

async function receive(resp, body, started) {
  const rate = Number(resp.headers.get('X-Sample-Rate')) || 24000;
  const pcm = body.response_format === 'pcm';
  const player = pcm ? new PcmPlayer(rate) : null;
  const reader = resp.body.getReader();
  const parts = [];
  let ttfa = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (!value || !value.length) continue;
    if (ttfa === null) ttfa = (performance.now() - started) / 1000;
    parts.push(value);
    if (player) player.push(value);
  }
  const elapsed = (performance.now() - started) / 1000;
  const bytes = body.response_format === 'wav' ? fixWavSizes(concat(parts)) : concat(parts);
  const blob = pcm ? wavBlob(bytes, rate) : new Blob([bytes], { type: resp.headers.get('Content-Type') || '' });
  const decoded = await decode(blob, rate);
  const samples = pcm ? bytes.length >> 1 : (decoded ? decoded.length : null);
  const seconds = samples == null ? null : samples / rate;
  const result = {
    format: body.response_format, sampleRate: rate, samples, seconds, ttfa, elapsed,
    rtf: seconds ? elapsed / seconds : NaN, scheduledSamples: player ? player.scheduled : null,
    decodedSamples: decoded ? decoded.length : null, decodedSeconds: decoded ? decoded.duration : null,
    requestId: resp.headers.get('X-Request-Id'),
  };
  window.voxport.last = result;
  document.body.dataset.lastSamples = String(samples);
  document.body.dataset.lastSampleRate = String(rate);
  $('#metrics').textContent = `${fmt(seconds)} of audio · first audio after ${fmt(ttfa)} · `
    + `real-time factor ${result.rtf.toFixed(2)} (${fmt(elapsed)} to generate)`;
  if (!pcm) {
    const player2 = $('#player');
    player2.hidden = false;
    player2.src = URL.createObjectURL(blob);
    player2.play().catch(() => {});
  }
  addHistory(result, blob, body);
}

function jobProgress(job) {
  const p = job.progress || {};
  const done = job.status === 'succeeded' ? `${fmt(job.result && job.result.duration_seconds)} of audio`
    : `${p.segments_done || 0} of ${p.segments_total || '?'} segments, ${fmt(p.audio_seconds)}`;
  return `Speech job ${job.id}: ${job.status} · ${done}`;
}

// A long text becomes a speech job: its progress in the history, then its audio to play and download.
async function runAsJob(body, form) {
  const resp = await api('/v1/audio/speech/jobs', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (!resp.ok) return showError(form, await errorOf(resp), resp);
  let job = await resp.json();
  const item = document.createElement('li');
  const meta = document.createElement('p');
  meta.className = 'meta job-progress';
  const text = document.createElement('p');
  text.textContent = body.input.length > 200 ? `${body.input.slice(0, 200)}…` : body.input;
  item.append(meta, text);
  $('#history').prepend(item);
  $('#history-empty').hidden = true;
  $('#metrics').textContent = 'Too long for one request: running it as a speech job (see History).';
  for (;;) {
    meta.textContent = jobProgress(job);
    window.voxport.job = job;
    if (!['queued', 'running'].includes(job.status)) break;
    await new Promise((resolve) => { setTimeout(resolve, 500); });
    const poll = await api(`/v1/audio/speech/jobs/${encodeURIComponent(job.id)}`);
    if (!poll.ok) return showError(form, await errorOf(poll), poll);
    job = await poll.json();
  }
  if (job.status !== 'succeeded') return;
  const content = await api(`/v1/audio/speech/jobs/${encodeURIComponent(job.id)}/content`);
  if (!content.ok) return showError(form, await errorOf(content), content);
  const url = URL.createObjectURL(await content.blob());
  const audio = document.createElement('audio');
  audio.controls = true;
  audio.src = url;
  const link = document.createElement('a');
  link.href = url;
  link.download = `voxport-${job.id}.${body.response_format === 'pcm' ? 'pcm' : body.response_format}`;
  link.textContent = `Download ${body.response_format}`;
  item.append(audio, link);
}

async function deleteVoice() {
  const id = $('#voice').value;
  const form = $('#speak-form');
  clearErrors(form);
  if (!window.confirm(`Delete the voice "${id}" from the library?`)) return;
  const resp = await api(`/v1/audio/voices/${encodeURIComponent(id)}`, { method: 'DELETE' });
  if (!resp.ok) return showError(form, { ...(await errorOf(resp)), param: 'voice' }, resp);
  status(`Deleted the voice ${id}.`);
  await loadVoices('');
}

const recording = { recorder: null, blob: null };

async function toggleRecording() {
  const button = $('#record');
  if (recording.recorder) {
    recording.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recording.blob = new Blob(chunks, { type: recorder.mimeType });
      recording.recorder = null;
      const preview = $('#recorded');
      preview.src = URL.createObjectURL(recording.blob);
      preview.hidden = false;
      button.textContent = 'Record again';
    };
    recorder.start();
    recording.recorder = recorder;
    button.textContent = 'Stop recording';
  } catch (err) {
    $('#clone-file-err').textContent = `The microphone is not available: ${err.message}`;
  }
}

async function cloneVoice(event) {
  event.preventDefault();
  const form = $('#clone-form');
  clearErrors(form);
  const data = new FormData();
  data.append('name', $('#clone-name').value.trim());
  const file = $('#clone-file').files[0];
  if (file) data.append('audio_sample', file, file.name);
  else if (recording.blob) {
    const ext = (recording.blob.type.split('/')[1] || 'webm').split(';')[0];
    data.append('audio_sample', recording.blob, `recording.${ext}`);
  }
  const transcript = $('#clone-text').value.trim();
  if (transcript) data.append('prompt_text', transcript);
  data.append('consent', $('#clone-consent').checked ? 'true' : 'false');
  $('#clone-button').disabled = true;
  try {
    const resp = await api('/v1/audio/voices', { method: 'POST', body: data });
    if (!resp.ok) return showError(form, await errorOf(resp), resp);
    const voice = await resp.json();
    await loadVoices(voice.id);
    form.reset();
    recording.blob = null;
    $('#recorded').hidden = true;
    status(`Saved the voice ${voice.name}; it is selected above.`);
  } catch (err) {
    $('.err-general', form).textContent = err.message;
  } finally {
    $('#clone-button').disabled = false;
  }
}

function saveKey(event) {
  event.preventDefault();
  const key = $('#api-key').value.trim();
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
  if (key) ($('#remember-key').checked ? localStorage : sessionStorage).setItem(KEY, key);
  $('#api-key').value = '';
  refresh();
}

function forgetKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
  status('Key forgotten.');
  refresh();
}

document.addEventListener('DOMContentLoaded', () => {
  $('#speak-form').addEventListener('submit', speak);
  $('#stop-button').addEventListener('click', () => state.abort && state.abort.abort());
  $('#voice').addEventListener('change', showVoice);
  $('#delete-voice').addEventListener('click', deleteVoice);
  document.querySelectorAll('.chip').forEach((chip) => chip.addEventListener('click', () => {
    $('#instructions').value = chip.textContent;
    $('#instructions').focus();
  }));
  $('#clone-form').addEventListener('submit', cloneVoice);
  $('#key-form').addEventListener('submit', saveKey);
  $('#forget-key').addEventListener('click', forgetKey);
  if (navigator.mediaDevices && window.MediaRecorder) $('#record').addEventListener('click', toggleRecording);
  else $('#record').hidden = true;
  refresh();
});
