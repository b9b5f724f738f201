//! The IR and the DSL as a user sees them: text form snapshots, shape errors with the
//! caller's location, serde, DOT, the verifier, and the model zoo's PyTorch names.


use plateau::compiler::ir::{Op, OutputKind};
use plateau::frontend::layers::{BatchNorm, Conv2d, Dropout, Layer, Linear};
use plateau::{evaluate, DType, FrontendError, Graph, IrError, ModelSpec, Tensor, TraceOptions, Tracer};

fn mlp_opts() -> TraceOptions {
    TraceOptions { batch_size: 128, input_shape: vec![784], ..TraceOptions::default() }
}

#[test]
fn mlp_forward_backward_text_form() {
    let mut m = plateau::trace(&ModelSpec::default(), &mlp_opts()).unwrap();
    m.differentiate().unwrap();
    m.graph.verify().unwrap();
    assert_eq!(m.param_count(), 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
    assert_eq!(m.graph.outputs().len(), 2 + 6, "loss, accuracy and one gradient per parameter");
    insta::assert_snapshot!("mlp_forward_backward", m.graph.to_text());
}

#[test]
fn text_form_is_deterministic() {
    let text = || {
        let mut m = plateau::trace(&ModelSpec::Cnn, &TraceOptions::default()).unwrap();
        m.differentiate().unwrap();
        m.graph.to_text()
    };
    assert_eq!(text(), text());
}

/// Runs `f` and returns its error message with the caller location replaced by `<here>`,
/// after checking that the location is `line` of this file.
fn message_at(err: FrontendError, line: u32) -> String {
    let msg = err.to_string();
    let here = format!("{}:{}:", file!(), line);
    assert!(msg.contains(&here), "{msg:?} should point at {here}");
    let start = msg.find(&here).unwrap();
    let end = msg[start..].find(')').map(|e| start + e).unwrap_or(msg.len());
    format!("{}<here>{}", &msg[..start], &msg[end..])
}

#[test]
fn shape_errors_name_the_op_the_shapes_and_the_caller() {
    let mut tr = Tracer::new(DType::F32, true);
    let x = tr.input("x", [4, 7]).unwrap();
    let fc = Linear::new(&mut tr, "fc", 10, 5, true).unwrap();
    let line = line!() + 1;
    let e = fc.forward(&mut tr, x).unwrap_err();
    insta::assert_snapshot!("linear_wrong_width", message_at(e, line));

    let y = tr.input("y", [4]).unwrap();
    let line = line!() + 1;
    let e = tr.add(x, y).unwrap_err();
    insta::assert_snapshot!("add_no_broadcast", message_at(e, line));

    let img = tr.input("img", [2, 3, 8, 8]).unwrap();
    let conv = Conv2d::new(&mut tr, "conv", 4, 8, 3, 1, 1, false).unwrap();
    let line = line!() + 1;
    let e = conv.forward(&mut tr, img).unwrap_err();
    insta::assert_snapshot!("conv_wrong_channels", message_at(e, line));

    let line = line!() + 1;
    let e = tr.reshape(img, [5, 7]).unwrap_err();
    insta::assert_snapshot!("reshape_wrong_count", message_at(e, line));

    let line = line!() + 1;
    let e = tr.max_pool2d(img, 11, 1, 0).unwrap_err();
    insta::assert_snapshot!("pool_window_too_large", message_at(e, line));

    assert!(matches!(
        e_of(tr.matmul(img, x)),
        FrontendError::Op { source: IrError::Shape { ref op, .. }, .. } if op == "matmul"
    ));
}

fn e_of<T: std::fmt::Debug>(r: Result<T, FrontendError>) -> FrontendError {
    r.unwrap_err()
}

#[test]
fn invalid_layer_configs_are_errors_naming_the_layer() {
    let mut tr = Tracer::new(DType::F32, true);
    let line = line!() + 1;
    let e = Conv2d::new(&mut tr, "c", 3, 0, 3, 1, 1, true).err().unwrap();
    insta::assert_snapshot!("conv_zero_channels", message_at(e, line));
    let line = line!() + 1;
    let e = Dropout::new(&mut tr, 1.5).err().unwrap();
    insta::assert_snapshot!("dropout_bad_p", message_at(e, line));
    let e = Linear::new(&mut tr, "l", 0, 3, true).err().unwrap();
    assert!(e.to_string().starts_with("invalid Linear: in_features must be positive"), "{e}");
    let bn = BatchNorm::new(&mut tr, "bn", 4).unwrap();
    let x = tr.input("x", [2, 3]).unwrap();
    let e = bn.forward(&mut tr, x).unwrap_err();
    assert!(e.to_string().starts_with("invalid BatchNorm: built for 4 features, input [2,3] has 3"), "{e}");
    // Declaring the same parameter twice is an error too.
    let e = Linear::new(&mut tr, "l2", 2, 3, true).and_then(|_| Linear::new(&mut tr, "l2", 2, 3, true)).err().unwrap();
    assert!(e.to_string().starts_with("param `l2.weight` is declared twice"), "{e}");
    // An initializer that cannot be sampled, and logits that are not [N, K], are errors too.
    for bound in [-1.0, f64::NAN] {
        let e = tr.param("u", [3], plateau::frontend::Init::Uniform { bound }).unwrap_err();
        assert!(e.to_string().starts_with("invalid u: Init::Uniform's bound must be a finite non-negative number"), "{e}");
    }
    let labels = tr.labels("labels", 2).unwrap();
    let flat = tr.input("flat", [6]).unwrap();
    let e = plateau::frontend::accuracy(&mut tr, flat, labels).unwrap_err();
    assert!(e.to_string().starts_with("invalid accuracy: expects [N,K] logits, got [6]"), "{e}");
}

#[test]
fn unknown_model_names_are_errors() {
    let e = "resnet50".parse::<ModelSpec>().unwrap_err();
    insta::assert_snapshot!("unknown_model", e.to_string());
    assert!("wrn16-0".parse::<ModelSpec>().is_err());
    assert_eq!("wrn16-8".parse::<ModelSpec>().unwrap(), ModelSpec::Wrn16 { k: 8 });
    assert_eq!("wrn16-8".parse::<ModelSpec>().unwrap().to_string(), "wrn16-8");
}

fn cifar(batch: usize) -> TraceOptions {
    TraceOptions { batch_size: batch, input_shape: vec![3, 32, 32], ..TraceOptions::default() }
}

#[test]
fn resnet18_serde_round_trip_is_lossless() {
    let mut m = plateau::trace(&ModelSpec::ResNet18, &cifar(8)).unwrap();
    m.differentiate().unwrap();
    let json = serde_json::to_string(&m.graph).unwrap();
    let mut back: Graph = serde_json::from_str(&json).unwrap();
    back.verify().unwrap();
    assert_eq!(back.len(), m.graph.len());
    assert_eq!(back.to_text(), m.graph.to_text());
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.outputs(), m.graph.outputs());
    for id in m.graph.node_ids() {
        assert_eq!(back.node(id), m.graph.node(id));
        assert_eq!(back.operands(id), m.graph.operands(id));
    }
    // Hash-consing works again after `reintern`: rebuilding a node returns the same id.
    back.reintern();
    let some_add = back.node_ids().find(|&id| matches!(back.node(id).op, Op::Binary(_))).unwrap();
    let ops = back.operands(some_add);
    let op = back.node(some_add).op.clone();
    assert_eq!(back.add(op, &ops).unwrap(), some_add);
}

#[test]
fn the_verifier_rejects_a_mistyped_node() {
    let m = plateau::trace(&ModelSpec::default(), &TraceOptions { batch_size: 2, input_shape: vec![3], ..TraceOptions::default() }).unwrap();
    let json = serde_json::to_string(&m.graph).unwrap();
    // The first matmul claims a wrong shape.
    let bad = json.replacen("\"shape\":[2,256]", "\"shape\":[2,255]", 1);
    assert_ne!(bad, json);
    let g: Graph = serde_json::from_str(&bad).unwrap();
    let e = g.verify().unwrap_err();
    assert!(matches!(e, IrError::Invariant(_)), "{e}");
    assert!(e.to_string().contains("is typed f32[2,255] but its op gives f32[2,256]"), "{e}");
}

#[test]
fn dot_export_lists_every_node_and_edge() {
    let m = plateau::trace(&ModelSpec::default(), &TraceOptions { batch_size: 2, input_shape: vec![3], ..TraceOptions::default() }).unwrap();
    let dot = m.graph.to_dot();
    assert!(dot.starts_with("digraph plateau {"));
    assert_eq!(dot.matches(" [label=\"%").count(), m.graph.len());
    let edges: usize = m.graph.node_ids().map(|id| m.graph.operands(id).len()).sum();
    assert_eq!(dot.matches("-> n").count(), edges);
    assert!(dot.contains("label=\"%9 = matmul\\nf32[2,256]\"") && dot.contains("n0 -> n9 [label=\"0\"];"), "{dot}");
}

#[test]
fn models_use_pytorch_state_dict_names() {
    let names = |spec: &ModelSpec, opts: &TraceOptions| {
        plateau::trace(spec, opts).unwrap().params.iter().map(|p| format!("{} {}", p.name, p.shape)).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&ModelSpec::Cnn, &TraceOptions::default()),
        [
            "0.weight [32,1,3,3]",
            "0.bias [32]",
            "3.weight [64,32,3,3]",
            "3.bias [64]",
            "7.weight [128,3136]",
            "7.bias [128]",
            "9.weight [10,128]",
            "9.bias [10]"
        ]
    );
    let r = plateau::trace(&ModelSpec::ResNet18, &cifar(2)).unwrap();
    assert_eq!(r.param_count(), 11_173_962, "torchvision resnet18 with a 3x3 stem and 10 classes");
    let rn: Vec<&str> = r.params.iter().map(|p| p.name.as_str()).collect();
    for n in ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight", "fc.bias"] {
        assert!(rn.contains(&n), "missing {n}");
    }
    let st: Vec<&str> = r.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(st.len(), 2 * 20, "running mean and var of 20 BatchNorms");
    assert!(st.contains(&"layer3.1.bn1.running_var"));
    let w = plateau::trace(&ModelSpec::Wrn16 { k: 4 }, &cifar(2)).unwrap();
    let wn: Vec<&str> = w.params.iter().map(|p| p.name.as_str()).collect();
    for n in ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.1.conv2.weight", "bn1.bias", "fc.weight"] {
        assert!(wn.contains(&n), "missing {n}");
    }
    assert_eq!(w.param_count(), 2_748_890, "WRN-16-4 on CIFAR-10");
}

#[test]
fn batchnorm_updates_running_statistics_in_training_only() {
    let opts = TraceOptions { batch_size: 4, input_shape: vec![3, 8, 8], dtype: DType::F64, ..TraceOptions::default() };
    let train = plateau::trace(&ModelSpec::ResNet18, &opts).unwrap();
    let updates = train.graph.outputs().iter().filter(|o| matches!(o.kind, OutputKind::StateUpdate { .. })).count();
    assert_eq!(updates, 40);
    let eval = plateau::trace(&ModelSpec::ResNet18, &TraceOptions { training: false, ..opts }).unwrap();
    assert!(eval.graph.outputs().iter().all(|o| o.kind == OutputKind::Value));

    // One BatchNorm by hand: running_mean' = 0.9 * 0 + 0.1 * mean, running_var' = 0.9 + 0.1 * unbiased var.
    let mut tr = Tracer::new(DType::F64, true);
    let x = tr.input("x", [4, 1]).unwrap();
    let bn = BatchNorm::new(&mut tr, "bn", 1).unwrap();
    let y = bn.forward(&mut tr, x).unwrap();
    tr.output("y", y).unwrap();
    let (g, params, states) = tr.finish();
    let mut b = plateau::Bindings::new();
    b.set("input", "x", Tensor::new(DType::F64, [4, 1], vec![1.0, 2.0, 3.0, 6.0]).unwrap());
    for p in &params {
        b.set("param", &p.name, Tensor::new(DType::F64, p.shape.clone(), p.init.sample(&p.name, 1, 0)).unwrap());
    }
    for s in &states {
        b.set("state", &s.name, Tensor::new(DType::F64, s.shape.clone(), s.init.sample(&s.name, 1, 0)).unwrap());
    }
    let out = plateau::run(&g, &b).unwrap();
    assert!((out["bn.running_mean"].item() - 0.3).abs() < 1e-12);
    // biased var 3.5, unbiased 14/3
    assert!((out["bn.running_var"].item() - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-12);
    let yv = &out["y"].data;
    assert!((yv.iter().sum::<f64>()).abs() < 1e-9, "normalised output has zero mean: {yv:?}");
}

#[test]
fn dropout_masks_depend_on_seed_and_step_only() {
    // The mask of one dropout layer of a tracer seeded `seed`, at `step`.
    let mask = |seed: u64, step: f64| {
        let mut tr = Tracer::new(DType::F64, true).with_seed(seed);
        let x = tr.input("x", [1000]).unwrap();
        let d = Dropout::new(&mut tr, 0.25).unwrap();
        let y = d.forward(&mut tr, x).unwrap();
        let y2 = d.forward(&mut tr, x).unwrap();
        assert_eq!(y, y2, "the same layer at the same step gives the same mask (the same node)");
        // A `step` scalar declared by the model itself is the one dropout reads.
        assert_eq!(tr.scalar("step").unwrap(), tr.step().unwrap());
        let (g, _, _) = tr.finish();
        let mut b = plateau::Bindings::new();
        b.set("input", "x", Tensor::new(DType::F64, [1000], vec![1.0; 1000]).unwrap());
        b.set("scalar", "step", Tensor::scalar(DType::F64, step));
        evaluate(&g, &b, &[y.0]).unwrap().remove(0).data
    };
    let (a, a2, b) = (mask(0, 3.0), mask(0, 3.0), mask(0, 4.0));
    assert_eq!(a, a2);
    assert_ne!(a, b);
    // Another run seed, another mask (a run's --seed reaches its dropout layers).
    assert_ne!(a, mask(1, 3.0));
    assert_eq!(mask(7, 3.0), mask(7, 3.0));
    let kept = a.iter().filter(|&&v| v != 0.0).count();
    assert!((700..800).contains(&kept), "kept {kept} of 1000 at p = 0.25");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-12));

    let mut tr = Tracer::new(DType::F64, false);
    let x = tr.input("x", [10]).unwrap();
    let d = Dropout::new(&mut tr, 0.5).unwrap();
    assert_eq!(d.forward(&mut tr, x).unwrap(), x, "identity in evaluation");
}

#[test]
fn initialisation_is_seeded_and_he_scaled() {
    let m = plateau::trace(&ModelSpec::default(), &mlp_opts()).unwrap();
    let p = &m.params[0];
    let a = p.init.sample(&p.name, p.shape.numel(), 1);
    assert_eq!(a, p.init.sample(&p.name, p.shape.numel(), 1));
    assert_ne!(a, p.init.sample(&p.name, p.shape.numel(), 2));
    let var = a.iter().map(|x| x * x).sum::<f64>() / a.len() as f64;
    assert!((var - 2.0 / 784.0).abs() < 0.05 * 2.0 / 784.0, "He variance 2/fan_in, got {var}");
}
