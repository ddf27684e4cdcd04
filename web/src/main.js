// radloop review app: shows the source series with the AI mask as an editable NiiVue drawing,
// and sends the radiologist's decision (accept, reject with a reason, or the edited mask) back
// to radloop. Everything comes from radloop's own origin; the session is an HttpOnly cookie.
// When a shadow model version segmented the same series, its mask is a second overlay (green,
// hidden until asked for, marked "SHADOW … not for clinical use"): never the drawing, never the decision.
import { Niivue, NVImage, SLICE_TYPE, SHOW_RENDER, DRAG_MODE } from '@niivue/niivue'
import './style.css'

const params = new URLSearchParams(location.search)
const resultId = Number.parseInt(params.get('result') ?? '', 10)
const base = `/review/api/results/${resultId}`
const $ = (id) => document.getElementById(id)

const state = {
  view: null, // what the server says about the result (GET base)
  aiBitmap: null, // the AI mask as NiiVue loaded it (RAS order), to measure edits against
  tool: 'navigate',
  penValue: 1,
  opacity: 0.5,
  lastOpacity: 0.5,
  initialWindow: null,
  changed: 0,
  decided: false,
  busy: false,
  shadow: { info: null, image: null, shown: false, loading: false },
}
const SHADOW_OPACITY = 0.4 // the AI mask (red, the drawing) stays visible beneath it

const nv = new Niivue({
  isRadiologicalConvention: true,
  backColor: [0, 0, 0, 1],
  crosshairColor: [0.25, 0.75, 1, 0.7],
  multiplanarShowRender: SHOW_RENDER.NEVER,
  dragAndDropEnabled: false,
  show3Dcrosshair: false,
  penSize: 3,
  maxDrawUndoBitmaps: 12,
  loadingText: 'loading...',
  logLevel: 'warn',
})
nv.opts.skipGradient = true // no 3D rendering here: see vite.config.js
nv.opts.mouseEventConfig = {
  leftButton: { primary: DRAG_MODE.crosshair, withShift: DRAG_MODE.pan },
  rightButton: DRAG_MODE.windowing,
  centerButton: DRAG_MODE.pan,
}
// Exposed for scripted checks (the end-to-end test reads the drawing through NiiVue's API).
window.radloopReview = { nv, state, readyAt: null, marks: [] }

function status(text, kind = '') {
  const el = $('status')
  el.textContent = text
  el.className = kind
}

async function fetchOk(url, init) {
  const response = await fetch(url, { credentials: 'same-origin', ...init })
  if (!response.ok) {
    let detail = response.statusText
    try { detail = (await response.json()).detail ?? detail } catch { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`)
  }
  return response
}

function text(value) {
  return value === null || value === undefined || value === '' ? '–' : String(value)
}

function ml(value) {
  return `${value.toFixed(1)} mL`
}

function renderHeader(view) {
  const s = view.study
  $('patient').replaceChildren(
    line(`${text(s.patient_name)} · ${text(s.patient_id)}`, 'strong'),
    line(`${text(s.study_date)} · acc ${text(s.accession_number)} · ${text(view.series.series_description)}`),
  )
  $('model').replaceChildren(
    line(`${text(view.model.name)} ${text(view.model.version)}`, 'strong'),
    line(`${text(view.pipeline.name)} ${text(view.pipeline.version)} · reviewer ${text(view.reviewer)}`),
  )
  $('ai-volume').textContent = ml(view.ai_volume_ml)
  $('worklist-link').hidden = !view.worklist
  const segments = view.segments
  const select = $('segment')
  select.replaceChildren(...segments.map((seg) => {
    const option = document.createElement('option')
    option.value = String(seg.number)
    option.textContent = `${seg.number} ${seg.label}`
    return option
  }))
  $('segment-choice').hidden = segments.length < 2
  state.penValue = segments.length ? segments[0].number : 1
  renderShadow(view.shadows ?? [])
  if (view.reviews.length) {
    const last = view.reviews[0]
    status(`Already reviewed: ${last.decision} by ${last.reviewer} (${last.ended_at}). A new decision is added.`)
  }
}

// The shadow (second-opinion) block: which version, its volume and Dice against the AI mask.
function renderShadow(shadows) {
  if (!shadows.length) return
  const shown = shadows.find((s) => s.url) ?? shadows[0]
  state.shadow.info = shown
  $('shadow').hidden = false
  const more = shadows.length > 1 ? ` (+${shadows.length - 1} more shadow version(s))` : ''
  $('shadow-label').textContent = shown.label + more
  $('shadow-mark').textContent = shown.label
  if (!shown.url) {
    $('shadow-facts').textContent = shown.error
    $('shadow-toggle').disabled = true
    return
  }
  $('shadow-facts').textContent = `${ml(shown.volume_ml)} · Dice vs AI ${shown.dice_vs_ai.toFixed(4)} · never delivered`
}

async function toggleShadow() {
  const shadow = state.shadow
  if (!shadow.info?.url || shadow.loading || !nv.volumes.length) return
  if (!shadow.image) {
    shadow.loading = true
    status('Loading the shadow model\'s mask…')
    try {
      const buffer = await fetchOk(shadow.info.url).then((r) => r.arrayBuffer())
      shadow.image = await NVImage.new(buffer, 'shadow.nii.gz', 'green', SHADOW_OPACITY, null, 0, 1, true)
      nv.addVolume(shadow.image)
      status(`Showing ${shadow.info.label}.`)
    } catch (error) {
      status(`Could not load the shadow mask: ${error.message}`, 'error')
      return
    } finally {
      shadow.loading = false
    }
    shadow.shown = true
  } else {
    shadow.shown = !shadow.shown
    nv.setOpacity(nv.volumes.indexOf(shadow.image), shadow.shown ? SHADOW_OPACITY : 0)
  }
  $('shadow-toggle').textContent = shadow.shown ? 'Hide shadow (H)' : 'Show shadow (H)'
  $('shadow-toggle').classList.toggle('active', shadow.shown)
  $('shadow-mark').hidden = !shadow.shown
  document.body.dataset.shadow = shadow.shown ? 'shown' : 'hidden'
}

function line(content, tag = 'div') {
  const el = document.createElement(tag === 'strong' ? 'div' : tag)
  if (tag === 'strong') el.className = 'strong'
  el.textContent = content
  return el
}

function setView(name) {
  const types = {
    axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL, multi: SLICE_TYPE.MULTIPLANAR,
  }
  nv.setSliceType(types[name])
  for (const b of document.querySelectorAll('[data-view]')) b.classList.toggle('active', b.dataset.view === name)
}

function setTool(tool) {
  state.tool = tool
  nv.setDrawingEnabled(tool !== 'navigate')
  if (tool === 'brush') nv.setPenValue(state.penValue, false)
  if (tool === 'eraser') nv.setPenValue(0, false)
  for (const b of document.querySelectorAll('[data-tool]')) b.classList.toggle('active', b.dataset.tool === tool)
  $('viewer').dataset.tool = tool
}

function setPenSize(size) {
  const value = Math.max(1, Math.min(25, size))
  nv.opts.penSize = value
  $('pen-size').value = String(value)
  $('pen-size-value').textContent = String(value)
}

function setOpacity(value) {
  state.opacity = value
  if (value > 0) state.lastOpacity = value
  nv.setDrawOpacity(value)
  $('opacity').value = String(Math.round(value * 100))
  $('opacity-value').textContent = String(Math.round(value * 100))
}

function zoom(factor) {
  const [x, y, z, scale] = nv.scene.pan2Dxyzmm
  nv.setPan2Dxyzmm(factor === 0 ? [0, 0, 0, 1] : [x, y, z, Math.max(0.25, Math.min(16, scale * factor))])
}

function resetWindow() {
  if (!state.initialWindow) return
  const volume = nv.volumes[0]
  ;[volume.cal_min, volume.cal_max] = state.initialWindow
  nv.updateGLVolume()
}

let measureTimer = 0
function scheduleMeasure() {
  clearTimeout(measureTimer)
  measureTimer = setTimeout(measure, 60)
}

// Volume of the current mask, voxels changed against the AI mask and their Dice, live.
function measure() {
  const draw = nv.drawBitmap
  const ai = state.aiBitmap
  if (!draw || !ai || !state.view) return
  let now = 0, both = 0, before = 0, changed = 0
  for (let i = 0; i < draw.length; i++) {
    const d = draw[i] !== 0
    const a = ai[i] !== 0
    if (d) now++
    if (a) before++
    if (d && a) both++
    if (draw[i] !== ai[i]) changed++
  }
  state.changed = changed
  $('current-volume').textContent = ml(now * state.view.voxel_volume_ml)
  $('live-dice').textContent = now + before ? ((2 * both) / (now + before)).toFixed(4) : '1.0000'
  $('changed-voxels').textContent = String(changed)
  $('save').disabled = state.decided || changed === 0
  $('accept').disabled = state.decided || changed > 0
  $('accept').title = changed > 0 ? 'The mask was edited: save the edit (S) or undo first' : 'Accept the AI result as it is (A)'
}

function finish(row) {
  state.decided = true
  for (const id of ['accept', 'save', 'reject']) $(id).disabled = true
  const dice = row.dice === null || row.dice === undefined ? '' : ` · Dice ${row.dice.toFixed(4)}`
  const change = row.volume_change_ml === null || row.volume_change_ml === undefined
    ? '' : ` · Δ volume ${row.volume_change_ml >= 0 ? '+' : ''}${row.volume_change_ml.toFixed(1)} mL`
  status(`Saved: ${row.decision}${dice}${change}. Thank you.`, 'ok')
  document.body.dataset.decision = row.decision
}

async function decide(decision, reason = '') {
  if (state.decided || state.busy) return
  state.busy = true
  status(decision === 'accepted' ? 'Accepting…' : 'Rejecting…')
  try {
    const response = await fetchOk(`${base}/decision`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Radloop-Review': '1' },
      body: JSON.stringify({ decision, reason, view_id: state.view.view_id }),
    })
    finish(await response.json())
  } catch (error) {
    status(`Could not save the decision: ${error.message}`, 'error')
  } finally {
    state.busy = false
  }
}

async function saveEdit() {
  if (state.decided || state.busy || state.changed === 0) return
  state.busy = true
  status('Saving the edited mask…')
  try {
    const nifti = await nv.saveImage({ filename: '', isSaveDrawing: true, volumeByIndex: 0 })
    const gzipped = await new Response(new Blob([nifti]).stream().pipeThrough(new CompressionStream('gzip'))).arrayBuffer()
    const response = await fetchOk(`${base}/edit?view_id=${state.view.view_id}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'X-Radloop-Review': '1' },
      body: gzipped,
    })
    finish(await response.json())
  } catch (error) {
    status(`Could not save the edit: ${error.message}`, 'error')
  } finally {
    state.busy = false
  }
}

function openReject() {
  if (state.decided || state.busy) return
  $('reject-dialog').showModal()
  $('reject-text').focus()
}

function onRejectClosed() {
  if ($('reject-dialog').returnValue !== 'confirm') return
  const preset = $('reject-preset').value
  const details = $('reject-text').value.trim()
  const reason = [preset, details].filter(Boolean).join(': ')
  if (!reason) {
    status('A rejection needs a reason.', 'error')
    return
  }
  decide('rejected', reason)
}

const KEYS = {
  Digit1: () => setView('axial'),
  Digit2: () => setView('coronal'),
  Digit3: () => setView('sagittal'),
  Digit4: () => setView('multi'),
  KeyN: () => setTool('navigate'),
  KeyB: () => setTool('brush'),
  KeyE: () => setTool('eraser'),
  BracketLeft: () => setPenSize(nv.opts.penSize - 1),
  BracketRight: () => setPenSize(nv.opts.penSize + 1),
  KeyU: () => nv.drawUndo(),
  KeyO: () => setOpacity(state.opacity > 0 ? 0 : state.lastOpacity),
  KeyH: toggleShadow,
  KeyW: resetWindow,
  Equal: () => zoom(1.25),
  NumpadAdd: () => zoom(1.25),
  Minus: () => zoom(0.8),
  NumpadSubtract: () => zoom(0.8),
  Digit0: () => zoom(0),
  KeyA: () => { if (!$('accept').disabled) decide('accepted') },
  KeyS: saveEdit,
  KeyR: openReject,
}

function onKey(event) {
  if (event.target.closest('input, textarea, select, dialog')) return
  if ((event.ctrlKey || event.metaKey) && event.code === 'KeyZ') {
    event.preventDefault()
    nv.drawUndo()
    return
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return
  const action = KEYS[event.code]
  if (action) {
    event.preventDefault()
    action()
  }
}

function wireControls() {
  for (const b of document.querySelectorAll('[data-view]')) b.addEventListener('click', () => setView(b.dataset.view))
  for (const b of document.querySelectorAll('[data-tool]')) b.addEventListener('click', () => setTool(b.dataset.tool))
  $('zoom-in').addEventListener('click', () => zoom(1.25))
  $('zoom-out').addEventListener('click', () => zoom(0.8))
  $('zoom-reset').addEventListener('click', () => zoom(0))
  $('wl-reset').addEventListener('click', resetWindow)
  $('undo').addEventListener('click', () => nv.drawUndo())
  $('pen-size').addEventListener('input', (e) => setPenSize(Number(e.target.value)))
  $('opacity').addEventListener('input', (e) => setOpacity(Number(e.target.value) / 100))
  $('segment').addEventListener('change', (e) => {
    state.penValue = Number(e.target.value)
    if (state.tool === 'brush') nv.setPenValue(state.penValue, false)
  })
  $('accept').addEventListener('click', () => decide('accepted'))
  $('save').addEventListener('click', saveEdit)
  $('reject').addEventListener('click', openReject)
  $('shadow-toggle').addEventListener('click', toggleShadow)
  $('reject-dialog').addEventListener('close', onRejectClosed)
  document.addEventListener('keydown', onKey)
  // Ctrl + wheel zooms (the wheel alone moves through the slices, NiiVue's default).
  $('viewer').addEventListener('wheel', (event) => {
    if (!event.ctrlKey) return
    event.preventDefault()
    event.stopPropagation()
    zoom(event.deltaY < 0 ? 1.1 : 1 / 1.1)
  }, { capture: true, passive: false })
  nv.onDrawingChanged = scheduleMeasure
}

// Milliseconds since the navigation started (the launch URL, before its redirect) at each step.
function mark(what) {
  window.radloopReview.marks.push([what, Math.round(performance.now())])
}

// Block until the GPU has run every queued command (gl.finish() does not wait in Chromium; a
// one-pixel readPixels does). With software WebGL, finishing the volume upload here is faster
// than letting the browser produce frames that queue behind it.
function waitForGpu() {
  nv.gl.readPixels(0, 0, 1, 1, nv.gl.RGBA, nv.gl.UNSIGNED_BYTE, new Uint8Array(4))
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))
}

async function main() {
  if (!Number.isInteger(resultId)) {
    status('No result named in the address (…/review/app/?result=ID).', 'error')
    return
  }
  // The three downloads start at once; the server converts the DICOM data while they wait.
  const viewP = fetchOk(base).then((r) => r.json())
  const imageP = fetchOk(`${base}/image.nii`).then((r) => r.arrayBuffer())
  const maskP = fetchOk(`${base}/mask.nii.gz`).then((r) => r.arrayBuffer())
  await nv.attachToCanvas($('gl'))
  mark('attached')
  wireControls()
  setView(params.get('view') ?? 'multi')
  setOpacity(state.opacity)
  try {
    const view = await viewP
    mark('view')
    state.view = view
    renderHeader(view)
    // Parse both files before handing either to NiiVue: once the volume is on the GPU, a software
    // renderer (no GPU) keeps the main thread busy for seconds and parsing would wait behind it.
    const [imageBuffer, maskBuffer] = await Promise.all([imageP, maskP])
    mark('downloaded')
    const image = await NVImage.new(imageBuffer, 'image.nii')
    mark('image parsed')
    const mask = await NVImage.new(maskBuffer, 'mask.nii.gz')
    mark('mask parsed')
    nv.addVolume(image)
    waitForGpu()
    mark('image shown')
    const volume = nv.volumes[0]
    state.initialWindow = [volume.cal_min, volume.cal_max]
    if (!nv.loadDrawing(mask)) throw new Error('the mask is not on the grid of the image')
    state.aiBitmap = nv.drawBitmap.slice()
    mark('drawing loaded')
    setTool('navigate')
    nv.drawScene()
    waitForGpu()
    mark('drawn')
    await nextFrame()
    window.radloopReview.readyAt = performance.now()
    document.body.dataset.ready = '1'
    measure()
    status(`Loaded in ${(window.radloopReview.readyAt / 1000).toFixed(2)} s.`)
  } catch (error) {
    document.body.dataset.ready = 'error'
    status(`Could not load the result: ${error.message}`, 'error')
  }
}

main()
