// MedStack web viewer. A client of the public API only (docs/api.md): the same routes and API keys as
// any script. The key lives in sessionStorage (gone when the tab closes), never in localStorage or a cookie.
import { Niivue, NVImage, SHOW_RENDER, SLICE_TYPE } from '@niivue/niivue'
import './style.css'

const KEY_STORE = 'medstack.apiKey'
const FINAL = new Set(['succeeded', 'failed', 'cancelled'])
const POLL_MS = 1000
// window presets as [level, width] in HU
const WINDOWS = { soft: [40, 400], lung: [-600, 1500], bone: [400, 1800] }
// label colours, by label index (1 = liver in the PCT-Net and reference classes); 0 is transparent
const PALETTE = [
  [0, 0, 0], [230, 60, 40], [60, 120, 230], [240, 200, 40], [200, 90, 220], [50, 200, 110],
  [250, 140, 30], [80, 220, 230], [150, 200, 60], [230, 80, 150], [255, 235, 160], [140, 110, 255],
  [40, 150, 140], [200, 160, 120], [120, 120, 200], [180, 40, 80],
]
const colourOf = (label) => PALETTE[label % PALETTE.length] ?? [255, 255, 255]

const $ = (selector) => document.querySelector(selector)
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else if (k === 'dataset') Object.assign(node.dataset, v)
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v)
  }
  for (const child of children) if (child != null) node.append(child)
  return node
}

// ---- API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor (status, problem) {
    super(problem.title || `HTTP ${status}`)
    this.status = status
    this.problem = problem
  }
}

function apiKey () { return sessionStorage.getItem(KEY_STORE) || '' }

async function api (path, options = {}) {
  const headers = new Headers(options.headers || {})
  const key = apiKey()
  if (key) headers.set('Authorization', `Bearer ${key}`)
  const response = await fetch(path, { ...options, headers })
  if (!response.ok) {
    let problem = { title: `HTTP ${response.status}`, detail: response.statusText }
    const type = response.headers.get('content-type') || ''
    if (type.includes('json')) problem = await response.json().catch(() => problem)
    throw new ApiError(response.status, problem)
  }
  return response
}
const apiJson = async (path, options) => (await api(path, options)).json()

// a problem as shown to people: its title, then its detail
function problemText (error) {
  if (error instanceof ApiError) return [error.problem.title, error.problem.detail].filter(Boolean).join(': ')
  return String(error.message || error)
}

function showBanner (text, kind = 'error') {
  const banner = $('#banner')
  banner.textContent = text
  banner.className = kind
  banner.hidden = !text
}

// a failed job's error has `type` (a problem type URI) and `detail`: show its title
function jobErrorTitle (error) {
  if (!error) return ''
  if (error.title) return error.title
  const kind = String(error.type || 'error').split('/').pop()
  return kind.charAt(0).toUpperCase() + kind.slice(1).replaceAll('-', ' ')
}

// ---- key ----------------------------------------------------------------------------------------

function renderKeyState () {
  const key = apiKey()
  $('#key-state').textContent = key ? `key …${key.slice(-4)} (this tab only)` : 'no key'
  $('#api-key').value = ''
  $('#api-key').placeholder = key ? '•••• (set)' : 'msk_…'
}

$('#key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const value = $('#api-key').value.trim()
  if (value) sessionStorage.setItem(KEY_STORE, value)
  renderKeyState()
  showBanner('')
  refreshJobs()
})
$('#key-forget').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORE)
  renderKeyState()
  $('#jobs').replaceChildren()
})

// ---- tabs ---------------------------------------------------------------------------------------

for (const button of document.querySelectorAll('#tabs button')) {
  button.addEventListener('click', () => {
    for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b === button)
    for (const tab of document.querySelectorAll('.tab')) tab.hidden = tab.id !== `tab-${button.dataset.tab}`
    // the report takes the right-hand side; segmentation and dialogue keep the viewer there
    $('#report-out').hidden = button.dataset.tab !== 'report'
    $('#result-view').hidden = button.dataset.tab === 'report'
  })
}

// ---- upload -------------------------------------------------------------------------------------

const localInputs = new Map() // job id -> the File uploaded from this tab (inputs are not served back)

async function upload (file) {
  if (!apiKey()) { showBanner('Paste an API key first (scopes segmentation and jobs).'); return }
  const state = $('#upload-state')
  state.textContent = `uploading ${file.name} (${(file.size / 1048576).toFixed(1)} MiB)…`
  state.className = 'muted'
  const form = new FormData()
  form.append('file', file, file.name)
  try {
    const job = await apiJson('/v1/segmentation/jobs', { method: 'POST', body: form })
    localInputs.set(job.id, file)
    state.textContent = `job ${job.id.slice(0, 8)} accepted (${job.model})`
    showBanner('')
    await refreshJobs()
    selectJob(job.id)
  } catch (error) {
    state.textContent = ''
    showBanner(`Upload refused — ${problemText(error)}`)
  }
}

const drop = $('#drop')
drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over') })
drop.addEventListener('dragleave', () => drop.classList.remove('over'))
drop.addEventListener('drop', (event) => {
  event.preventDefault()
  drop.classList.remove('over')
  const file = event.dataTransfer?.files?.[0]
  if (file) upload(file)
})
$('#file-input').addEventListener('change', (event) => {
  const file = event.target.files?.[0]
  if (file) upload(file)
  event.target.value = ''
})

// ---- jobs ---------------------------------------------------------------------------------------

let jobs = []
let selectedId = null
let pollTimer = null

async function refreshJobs () {
  if (!apiKey()) return
  try {
    const page = await apiJson('/v1/jobs?limit=50')
    jobs = page.data
    renderJobs()
    if (selectedId) {
      const job = jobs.find((j) => j.id === selectedId)
      if (job && job.state === 'succeeded' && shownId !== job.id) showResult(job)
      else if (job && !FINAL.has(job.state)) renderPending(job)
      else if (job && job.state !== 'succeeded') renderPending(job)
    }
  } catch (error) {
    showBanner(`Could not list jobs — ${problemText(error)}`)
  }
  clearTimeout(pollTimer)
  if (jobs.some((j) => !FINAL.has(j.state))) pollTimer = setTimeout(refreshJobs, POLL_MS)
}
$('#refresh').addEventListener('click', refreshJobs)

function renderJobs () {
  const list = $('#jobs')
  list.replaceChildren(...jobs.map((job) => {
    const bar = el('progress', { max: '1', value: String(job.progress) })
    const error = job.error
      ? el('div', { class: 'job-error', title: job.error.detail || '' }, jobErrorTitle(job.error),
        job.error.detail ? el('span', { class: 'muted' }, ` — ${job.error.detail}`) : null)
      : null
    return el('li', {
      class: `job ${job.state}${job.id === selectedId ? ' selected' : ''}`,
      dataset: { jobId: job.id, state: job.state },
      onclick: () => selectJob(job.id),
    },
    el('div', { class: 'job-line' },
      el('span', { class: 'job-id' }, job.id.slice(0, 8)),
      el('span', { class: 'job-kind' }, `${job.kind} · ${job.model}`),
      el('span', { class: `badge ${job.state}` }, job.state)),
    el('div', { class: 'job-line' }, bar, el('span', { class: 'muted stage' },
      `${job.stage} ${Math.round(job.progress * 100)}%`)),
    error)
  }))
}

function selectJob (id) {
  selectedId = id
  renderJobs()
  const job = jobs.find((j) => j.id === id)
  if (!job) return
  if (job.state === 'succeeded') showResult(job)
  else renderPending(job)
}

function renderPending (job) {
  if (shownId === job.id) return
  $('#result-title').textContent = job.error
    ? `job ${job.id.slice(0, 8)} ${job.state}: ${jobErrorTitle(job.error)}`
    : `job ${job.id.slice(0, 8)} is ${job.state} (${job.stage})…`
}

// ---- result view ----------------------------------------------------------------------------------

let nv = null
let shownId = null
let inputVolume = null
let maskVolume = null

function viewer () {
  if (nv) return nv
  nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, crosshairColor: [1, 1, 0, 0.6],
    isColorbar: false, dragAndDropEnabled: false, isRadiologicalConvention: true, // patient's right on the left
    // slices only: the 3D render tile ray-casts the whole volume, slow without a GPU
    multiplanarShowRender: SHOW_RENDER.NEVER })
  nv.attachToCanvas($('#viewer'))
  nv.setSliceType(SLICE_TYPE.AXIAL)
  return nv
}

function labelLut (structures) {
  const labels = [0, ...structures.map((s) => s.label)]
  const names = ['background', ...structures.map((s) => s.name)]
  const colours = labels.map(colourOf)
  return { R: colours.map((c) => c[0]), G: colours.map((c) => c[1]), B: colours.map((c) => c[2]),
    A: labels.map((l) => (l === 0 ? 0 : 255)), I: labels, labels: names }
}

async function loadBuffer (name, buffer, colormap) {
  // trust the header's range: a robust percentile over 35 M voxels costs seconds on a slow machine
  return NVImage.loadFromUrl({ url: name, name, buffer, colormap, trustCalMinMax: true })
}

const t0 = performance.now()
const mark = (what) => console.debug(`[medstack-ui] ${what} at ${Math.round(performance.now() - t0)} ms`)

async function showResult (job) {
  shownId = job.id
  mark(`showing job ${job.id}`)
  const wrap = $('#viewer-wrap')
  wrap.dataset.state = 'loading'
  $('#result-title').textContent = `job ${job.id.slice(0, 8)} · ${job.model} · loading…`
  const result = job.result || {}
  // segmentation and medlsam: a list of structures with volumes and a mask; localization: boxes by name
  const boxes = Array.isArray(result.structures) ? null : (result.structures || {})
  const structures = boxes
    ? Object.entries(boxes).map(([name, box], i) => ({ name, label: i + 1, box }))
    : (result.structures || [])
  renderLegend(structures, Boolean(boxes))
  renderArtifacts(job)
  try {
    const view = viewer()
    while (view.volumes.length) view.removeVolume(view.volumes[0])
    inputVolume = maskVolume = null
    const names = result.artifacts || []
    const mask = names.includes('mask.nii.gz')
      ? await (await api(`/v1/jobs/${job.id}/artifacts/mask.nii.gz`)).arrayBuffer()
      : null
    if (shownId !== job.id) return
    const file = localInputs.get(job.id)
    if (file) inputVolume = await loadBuffer(file.name, await file.arrayBuffer(), 'gray')
    if (mask) maskVolume = await loadBuffer('mask.nii.gz', mask, 'gray')
    else if (boxes && inputVolume) maskVolume = boxOutlines(inputVolume, structures)
    if (maskVolume) {
      maskVolume.setColormapLabel(labelLut(structures))
      maskVolume.opacity = Number($('#opacity').value)
    }
    // each addVolume re-renders every layer's 3D texture (and NiiVue's gradient texture): cheap on a GPU,
    // tens of seconds in a software renderer for a 512×512×133 CT, so the window is set before, not after
    if (inputVolume) {
      const [level, width] = WINDOWS.soft
      inputVolume.cal_min = level - width / 2
      inputVolume.cal_max = level + width / 2
      markWindow('soft')
      view.addVolume(inputVolume)
    }
    if (maskVolume) view.addVolume(maskVolume)
    mark('drawn')
    $('#controls').hidden = !(inputVolume || maskVolume)
    $('#input-note').textContent = inputVolume
      ? `input: ${file.name}`
      : 'the input is not served back (your data): pick the file you uploaded to see it under the ' +
        (boxes ? 'boxes' : 'mask')
    if (!inputVolume && !maskVolume && names.includes('preview.png')) await showPreview(job)
    else $('#preview').hidden = true
    const model = result.model || {}
    $('#result-title').textContent =
      `job ${job.id.slice(0, 8)} · ${model.name || job.model} v${model.version ?? '?'} · sha256 ${(model.sha256 || '').slice(0, 12)}`
    wrap.dataset.state = 'ready'
    wrap.dataset.jobId = job.id
  } catch (error) {
    wrap.dataset.state = 'error'
    showBanner(`Could not show the result — ${problemText(error)}`)
  }
}

// localization boxes as a label volume on the input's grid: a one-voxel shell per box, label i+1
function boxOutlines (input, structures) {
  const out = input.clone()
  out.zeroImage()
  out.name = 'boxes'
  const [nx, ny, nz] = [out.hdr.dims[1], out.hdr.dims[2], out.hdr.dims[3]]
  const img = out.img
  for (const { label, box } of structures) {
    const lo = box.box_voxel.min.map((v) => Math.max(0, v))
    const hi = box.box_voxel.max.map((v, a) => Math.min([nx, ny, nz][a] - 1, v))
    for (let k = lo[2]; k <= hi[2]; k++) {
      for (let j = lo[1]; j <= hi[1]; j++) {
        for (let i = lo[0]; i <= hi[0]; i++) {
          // the box's six faces: each slice through it shows the box's outline
          const face = i === lo[0] || i === hi[0] || j === lo[1] || j === hi[1] || k === lo[2] || k === hi[2]
          if (face) img[i + nx * (j + ny * k)] = label
        }
      }
    }
  }
  out.cal_min = 0
  out.cal_max = structures.length
  return out
}

// a job whose volumes the browser cannot show (localization without the input at hand): its preview.png
async function showPreview (job) {
  const blob = await (await api(`/v1/jobs/${job.id}/artifacts/preview.png`)).blob()
  const img = $('#preview')
  img.src = URL.createObjectURL(blob)
  img.hidden = false
}

function applyWindow (name) {
  const volume = inputVolume
  if (!volume) return
  const [level, width] = WINDOWS[name]
  volume.cal_min = level - width / 2
  volume.cal_max = level + width / 2
  viewer().updateGLVolume()
  markWindow(name)
}

function markWindow (name) {
  for (const b of document.querySelectorAll('[data-window]')) b.classList.toggle('active', b.dataset.window === name)
}

$('#input-volume').addEventListener('change', async (event) => {
  const file = event.target.files?.[0]
  event.target.value = ''
  if (!file || !shownId) return
  localInputs.set(shownId, file)
  const job = jobs.find((j) => j.id === shownId)
  shownId = null
  if (job) await showResult(job)
})

for (const button of document.querySelectorAll('[data-view]')) {
  button.addEventListener('click', () => {
    const types = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL,
      multi: SLICE_TYPE.MULTIPLANAR }
    viewer().setSliceType(types[button.dataset.view])
    for (const b of document.querySelectorAll('[data-view]')) b.classList.toggle('active', b === button)
  })
}
for (const button of document.querySelectorAll('[data-window]')) {
  button.addEventListener('click', () => applyWindow(button.dataset.window))
}
$('#opacity').addEventListener('input', (event) => {
  const value = Number(event.target.value)
  $('#opacity-value').textContent = value.toFixed(2)
  if (maskVolume) viewer().setOpacity(viewer().volumes.indexOf(maskVolume), value)
})

function renderLegend (structures, boxes = false) {
  const table = $('#legend')
  table.hidden = structures.length === 0
  table.tHead.rows[0].cells[3].textContent = boxes ? 'box (mm)' : 'volume (mL)'
  table.tBodies[0].replaceChildren(...structures.map((s) => {
    const swatch = el('span', { class: 'swatch' })
    const [r, g, b] = colourOf(s.label)
    swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})` // CSSOM, not an inline style attribute: CSP-safe
    const size = boxes
      ? s.box.box_mm.max.map((v, a) => Math.abs(v - s.box.box_mm.min[a]).toFixed(0)).join(' × ')
      : Number(s.volume_ml).toFixed(1)
    return el('tr', { dataset: { structure: s.name } }, el('td', {}, swatch), el('td', {}, s.name),
      el('td', {}, String(s.label)), el('td', { class: 'num' }, size))
  }))
}

async function renderArtifacts (job) {
  const box = $('#artifacts')
  box.replaceChildren(el('h3', {}, 'Artifacts'))
  try {
    const listing = await apiJson(`/v1/jobs/${job.id}/artifacts`)
    const items = Array.isArray(listing) ? listing : (listing.data || listing.artifacts || [])
    box.append(el('ul', {}, ...items.map((a) => el('li', {},
      el('a', { href: a.href, class: 'download', dataset: { artifact: a.name },
        onclick: (event) => { event.preventDefault(); download(a) } }, a.name),
      el('span', { class: 'muted' }, ` ${(a.size_bytes / 1024).toFixed(1)} KiB · ${a.media_type}`)))))
  } catch (error) {
    box.append(el('p', { class: 'job-error' }, problemText(error)))
  }
}

// links need the key in a header: fetch the file, then hand the browser a blob: URL to save
async function download (artifact) {
  try {
    const blob = await (await api(artifact.href)).blob()
    const url = URL.createObjectURL(blob)
    const a = el('a', { href: url, download: artifact.name })
    document.body.append(a)
    a.click()
    a.remove()
    setTimeout(() => URL.revokeObjectURL(url), 10000)
  } catch (error) {
    showBanner(`Download failed — ${problemText(error)}`)
  }
}

// ---- X-ray report -------------------------------------------------------------------------------

$('#report-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const file = $('#report-file').files?.[0]
  const out = $('#report-out')
  if (!file) { out.replaceChildren(el('p', { class: 'job-error' }, 'Choose a radiograph first.')); return }
  const form = new FormData()
  form.append('file', file, file.name)
  const indication = $('#report-indication').value.trim()
  if (indication) form.append('indication', indication)
  out.replaceChildren(el('p', { class: 'muted' }, 'writing the report…'))
  let preview = null
  if (/^image\/(png|jpeg)$/.test(file.type)) {
    preview = el('img', { class: 'xray', alt: 'the radiograph' })
    preview.src = URL.createObjectURL(file)
  }
  try {
    const report = await apiJson('/v1/reports', { method: 'POST', body: form })
    const findings = el('table', { id: 'findings' },
      el('thead', {}, el('tr', {}, el('th', {}, 'finding'), el('th', {}, 'probability'), el('th', {}, 'threshold'),
        el('th', {}, 'present'))),
      el('tbody', {}, ...(report.findings || []).map((f) => el('tr', { class: f.present ? 'present' : '' },
        el('td', {}, f.name.replaceAll('_', ' ')), el('td', { class: 'num' }, Number(f.probability).toFixed(2)),
        el('td', { class: 'num' }, Number(f.threshold).toFixed(2)),
        el('td', {}, f.present === null ? 'not validated' : (f.present ? 'yes' : 'no'))))))
    const check = report.input_check || {}
    out.replaceChildren(
      preview ?? el('p', { class: 'muted' }, `${file.name}: DICOM ${check.modality ?? ''} ${check.view_position ?? ''} — the browser does not ` +
        'draw DICOM pixels; the report was written from them'),
      el('div', { class: 'side' }, el('h3', {}, 'Report'), el('p', { id: 'report-text' }, report.text),
        el('h3', {}, 'Findings'), findings, ...(report.warnings || []).map((w) => el('p', { class: 'warning' }, w))))
  } catch (error) {
    out.replaceChildren(el('p', { class: 'job-error', id: 'report-error' }, problemText(error)))
  }
})

// ---- dialogue (Server-Sent Events over fetch: EventSource cannot send the key header) -------------

let sessionId = null

async function* sseEvents (response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buffer += value
    let cut
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut)
      buffer = buffer.slice(cut + 2)
      let event = 'message'
      const data = []
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
      }
      yield { event, data: data.join('\n') }
    }
  }
}

$('#dialogue-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const input = $('#dialogue-input')
  const content = input.value.trim()
  if (!content) return
  input.value = ''
  const log = $('#dialogue-log')
  log.append(el('p', { class: 'user' }, content))
  const answer = el('p', { class: 'assistant streaming' })
  log.append(answer)
  try {
    if (!sessionId) {
      sessionId = (await apiJson('/v1/dialogue/sessions', { method: 'POST',
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ language: 'en' }) })).id
    }
    const response = await api(`/v1/dialogue/sessions/${sessionId}/messages`, { method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ content, stream: true }) })
    for await (const { event: kind, data } of sseEvents(response)) {
      const payload = JSON.parse(data || 'null')
      if (kind === 'token') answer.append(typeof payload === 'string' ? payload : (payload?.text ?? ''))
      else if (kind === 'meta' && payload?.red_flags?.length) {
        log.insertBefore(el('p', { class: 'job-error' }, `red flags: ${payload.red_flags.join(', ')}`), answer)
      } else if (kind === 'error') answer.append(el('span', { class: 'job-error' }, ` ${payload?.title ?? 'error'}`))
      else if (kind === 'message' && payload?.content) {
        answer.textContent = payload.content
        if (payload.notice) answer.after(el('p', { class: 'muted notice' }, payload.notice))
      }
    }
  } catch (error) {
    answer.textContent = problemText(error)
    answer.classList.add('job-error')
    if (error instanceof ApiError && error.status === 404) sessionId = null
  }
  answer.classList.remove('streaming')
})

// ---- start --------------------------------------------------------------------------------------

renderKeyState()
refreshJobs()
