from jedi_deploy.contracts.header import read_safetensors_metadata


def test_pretrained_checkpoint_describes_its_expert(expert_paths, datasets):
    by_name = {d.name: d for d in datasets}
    for p in expert_paths:
        meta = read_safetensors_metadata(p, "expert")
        assert tuple(meta["categories"]) == by_name[meta["dataset"]].categories
        assert meta["pretrain"]["num_samples"] == len(by_name[meta["dataset"]].samples("train"))
        assert 0 <= meta["pretrain"]["train_acc1"] <= 100
