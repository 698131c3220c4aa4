from ptmrec.cli import main


def test_compare_refuses_a_named_stage2_folder_before_any_work(capsys, tmp_path):
    # compare keeps each mode in stage2/ or stage2-<mode>/: a named folder would be skipped or overwritten
    code = main(["-q", "compare", "--config", "configs/smoke.yaml", "--set", f"run.uri=file://{tmp_path}/run",
                 "--set", "stage2.output=stage2-other"])
    err = capsys.readouterr().err
    assert code == 2
    assert "stage2.output" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
