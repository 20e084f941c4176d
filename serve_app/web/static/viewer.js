// The 3D view: one three.js scene per viewer, GLB results loaded from bytes, orbit/zoom (OrbitControls),
// reset, wireframe, the object's size. Renders on demand (after a change), not every frame: the page stays
// cheap on a laptop and on software WebGL.

import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OBJLoader } from "three/addons/loaders/OBJLoader.js";
import { PLYLoader } from "three/addons/loaders/PLYLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";

export const VIEWER_BACKGROUND = 0x20242a; // the empty scene's colour (the tests compare against it)

export class Viewer {
  constructor(container) {
    this.container = container;
    this.renderer = new THREE.WebGLRenderer({ antialias: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.outputColorSpace = THREE.SRGBColorSpace;
    this.canvas = this.renderer.domElement;
    this.canvas.tabIndex = 0; // arrow keys pan once focused
    this.canvas.setAttribute("aria-label", "3D view: drag to turn, wheel or pinch to zoom, arrow keys to pan");
    container.prepend(this.canvas);

    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(VIEWER_BACKGROUND);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 2.0));
    const key = new THREE.DirectionalLight(0xffffff, 1.6);
    key.position.set(2, 3, 4);
    this.scene.add(key);
    const rim = new THREE.DirectionalLight(0xffffff, 0.6);
    rim.position.set(-3, 1, -2);
    this.scene.add(rim);

    this.camera = new THREE.PerspectiveCamera(40, 4 / 3, 0.001, 1000);
    this.camera.position.set(0, 0.6, 2.4);
    this.controls = new OrbitControls(this.camera, this.canvas);
    this.controls.enableDamping = false;
    this.controls.listenToKeyEvents(this.canvas);
    this.controls.addEventListener("change", () => this.render());

    this.root = null;
    this.wireframe = false;
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(container);
    this.resize();
  }

  resize() {
    const w = Math.max(this.container.clientWidth, 1);
    const h = Math.max(this.container.clientHeight, 1);
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }

  /**
   * Show a mesh file (ArrayBuffer) of the service's formats: "glb" (default), "obj" or "ply" (vertex colours
   * kept). Nodes whose glTF extras say `hidden: true` start hidden. Returns the glTF (for GLB) or null.
   */
  async load(buffer, format = "glb") {
    let gltf = null;
    let root;
    if (format === "glb") {
      gltf = await new GLTFLoader().parseAsync(buffer, "");
      root = gltf.scene;
    } else if (format === "obj") {
      root = new OBJLoader().parse(new TextDecoder().decode(buffer));
    } else if (format === "ply") {
      const geometry = new PLYLoader().parse(buffer);
      if (!geometry.hasAttribute("normal")) geometry.computeVertexNormals();
      const material = new THREE.MeshStandardMaterial({ vertexColors: geometry.hasAttribute("color"), roughness: 0.9 });
      root = new THREE.Group().add(new THREE.Mesh(geometry, material));
    } else {
      throw new Error(`the 3D view cannot show ${format} files`);
    }
    root.traverse((obj) => {
      if (obj.isMesh && format === "obj") {
        if (!obj.geometry.hasAttribute("normal")) obj.geometry.computeVertexNormals();
        const colours = obj.geometry.hasAttribute("color");
        obj.material = new THREE.MeshStandardMaterial({ vertexColors: colours, roughness: 0.9 });
      }
    });
    if (this.root) this.scene.remove(this.root);
    this.root = root;
    this.root.traverse((obj) => {
      if (obj.userData && obj.userData.hidden === true) obj.visible = false;
      if (obj.isMesh) obj.material.side = THREE.DoubleSide;
    });
    this.scene.add(this.root);
    this.setWireframe(this.wireframe);
    this.fit();
    return gltf;
  }

  /** The top-level nodes of the loaded scene, in glTF order (node 0, node 1, ...). */
  nodes() {
    return this.root ? this.root.children : [];
  }

  setWireframe(on) {
    this.wireframe = on;
    if (this.root)
      this.root.traverse((obj) => {
        if (obj.isMesh) obj.material.wireframe = on;
      });
    this.render();
  }

  /** Bounding-box size (x, y, z) of what is visible, in the file's units. */
  size() {
    if (!this.root) return null;
    const box = new THREE.Box3().setFromObject(this.root, true);
    return box.isEmpty() ? null : box.getSize(new THREE.Vector3());
  }

  /** Frame the whole object (also the Reset button). */
  fit() {
    if (!this.root) return this.render();
    const box = new THREE.Box3().setFromObject(this.root, true);
    if (box.isEmpty()) return this.render();
    const centre = box.getCenter(new THREE.Vector3());
    const radius = box.getBoundingSphere(new THREE.Sphere()).radius || 1;
    const distance = radius / Math.sin(THREE.MathUtils.degToRad(this.camera.fov / 2)) * 1.05;
    const direction = new THREE.Vector3(0.35, 0.3, 1).normalize(); // front (+Z), a little from above
    this.camera.near = distance / 100;
    this.camera.far = distance * 100;
    this.camera.position.copy(centre).addScaledVector(direction, distance);
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(centre);
    this.controls.minDistance = radius * 0.2;
    this.controls.maxDistance = distance * 10;
    this.controls.update();
    this.render();
  }

  dispose() {
    this.resizeObserver.disconnect();
    this.controls.dispose();
    if (this.root)
      this.root.traverse((obj) => {
        if (obj.isMesh) {
          obj.geometry.dispose();
          obj.material.dispose();
        }
      });
    this.renderer.dispose();
    this.renderer.forceContextLoss();
    this.canvas.remove();
  }
}

/** "0.72 × 0.31 × 0.72 m" (or cm/mm for small objects) from a size vector in metres. */
export function formatSize(size) {
  const max = Math.max(size.x, size.y, size.z);
  const [unit, k] = max >= 1 ? ["m", 1] : max >= 0.01 ? ["cm", 100] : ["mm", 1000];
  const f = (v) => (v * k).toFixed(v * k >= 100 ? 0 : 1);
  return `${f(size.x)} × ${f(size.y)} × ${f(size.z)} ${unit}`;
}
